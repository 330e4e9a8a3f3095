"""The kill switch: tools, backends and principals an operator turned off, until turned on again.

``POST /admin/disable`` and ``/admin/enable`` (``gateway.ops.admin``) change a
``KillSwitch``; ``apply`` makes the change effective at once, on every path:

- a tool or a backend leaves the catalog (``Catalog.set_disabled``): it is no
  longer listed, the routing table no longer has it (so neither the express lane
  nor the general path can send a call to it), clients get ``list_changed``, and a
  call to it is answered 403 (-32057 ``Disabled``) by the routing fallback;
- a principal (an authenticated subject) is refused 403 (-32057) by the header gate
  on every request, whatever it asks (``AuthGate.block``).

The switch belongs to the running gateway, not to a config snapshot: a reload builds
new policies and applies the same switch to them, so what was disabled stays disabled
until enabled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.catalog.aggregate import Catalog

__all__ = ["KINDS", "KillSwitch"]

KINDS = ("tool", "backend", "principal")
"""What can be disabled: an exposed tool name, a backend's name, a principal's subject."""


class KillSwitch:
    """The disabled names of each kind, and where they take effect."""

    def __init__(self) -> None:
        self.disabled: dict[str, set[str]] = {kind: set() for kind in KINDS}
        self.on_change: list[Callable[[str, str, str], None]] = []
        """Called with ``(action, kind, value)`` after each change that changed something (audit)."""

    def set(self, action: str, kind: str, value: str) -> bool:
        """``action`` ``disable`` or ``enable`` one name of ``kind``; True when that changed the state."""
        names = self.disabled[kind]
        if action == "disable":
            changed = value not in names
            names.add(value)
        else:
            changed = value in names
            names.discard(value)
        if changed:
            for hook in self.on_change:
                hook(action, kind, value)
        return changed

    def apply(self, catalog: Catalog, gate: Any) -> None:
        """Make the state effective on ``catalog`` (tools, backends) and the front's header ``gate``
        (principals; only a gate that authenticates has them)."""
        catalog.set_disabled(self.disabled["tool"], self.disabled["backend"])
        block = getattr(gate, "block", None)
        if block is not None:
            block(frozenset(self.disabled["principal"]))

    def state(self) -> dict[str, list[str]]:
        """What is disabled, by kind, sorted (``GET /admin/disabled``)."""
        return {f"{kind}s": sorted(names) for kind, names in self.disabled.items()}
