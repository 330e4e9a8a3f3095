"""Hot reload: what a new config changes, and what it cannot change while running.

``plan_reload(old, new)`` compares two loaded configs and says what a reload does
(``Gateway.reload`` carries it out):

- backends whose config is equal are kept as they are: their connections,
  processes and upstream sessions go on;
- backends whose only changes are in how their items are shown or cached
  (``SOFT_FIELDS``: shaping, cache, namespace, readiness) are kept too, with the new
  config (the catalog is rebuilt from it);
- any other change restarts that backend (a new one is started, the old one drained);
- backends that are gone (or now ``enabled = false``) are drained and stopped; new
  ones are started.

What the listener was started with cannot change without a restart
(``RESTART_FIELDS``: the address, the path, TLS, the express lane switch, the name
separator and passthrough, the admin listener): a reload that changes one of them is
refused as a whole, with a message naming it, and the old config keeps serving.

The policies (authentication, RBAC, transforms, limits, cache) are rebuilt from the
new config: the cache starts empty and the limiters' buckets start full.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from gateway.config import BackendConfig, Config

__all__ = ["RESTART_FIELDS", "SOFT_FIELDS", "BackendPlan", "ReloadRefused", "plan_reload"]

SOFT_FIELDS = ("cache", "tools", "hide_destructive", "read_only", "namespace", "required")
"""Backend options a running backend takes without reconnecting (the catalog and the policies read them)."""

RESTART_FIELDS = {
    "server": ("host", "port", "path", "tls_cert_file", "tls_key_file", "tls_client_ca_file"),
    "gateway": ("separator", "passthrough", "express"),
}
"""Options only a restart changes (table -> fields); ``[admin]`` as a whole is one of them."""


class ReloadRefused(Exception):
    """A new config that cannot be applied while running; the message says why (one line)."""


class BackendPlan(msgspec.Struct, frozen=True):
    """What a reload does to the backends, by name."""

    keep: tuple[str, ...]
    """Unchanged, or changed only in ``SOFT_FIELDS``: kept running, given the new config."""
    restart: tuple[str, ...]
    """Changed otherwise: a new backend replaces the running one."""
    stop: tuple[str, ...]
    """Gone from the config (or disabled): drained and stopped."""
    start: tuple[str, ...]
    """New in the config: started."""

    @property
    def changed(self) -> bool:
        """Whether any backend is started, restarted or stopped."""
        return bool(self.restart or self.stop or self.start)


def plan_reload(old: Config, new: Config) -> BackendPlan:
    """What reloading ``old`` into ``new`` does to the backends; ``ReloadRefused`` when ``new``
    changes an option only a restart changes."""
    for table, fields in RESTART_FIELDS.items():
        before, after = getattr(old, table), getattr(new, table)
        for field in fields:
            if getattr(before, field) != getattr(after, field):
                raise ReloadRefused(f"[{table}] {field} changed: that needs a restart (the running config is kept)")
    if old.admin != new.admin:
        raise ReloadRefused("[admin] changed: that needs a restart (the running config is kept)")
    running = {name: b for name, b in old.backends.items() if b.enabled}
    wanted = {name: b for name, b in new.backends.items() if b.enabled}
    keep, restart = [], []
    for name in sorted(running.keys() & wanted.keys()):
        (keep if _soft(running[name], wanted[name]) else restart).append(name)
    return BackendPlan(
        keep=tuple(keep),
        restart=tuple(restart),
        stop=tuple(sorted(running.keys() - wanted.keys())),
        start=tuple(sorted(wanted.keys() - running.keys())),
    )


def _soft(before: BackendConfig, after: BackendConfig) -> bool:
    """Whether ``after`` differs from ``before`` in ``SOFT_FIELDS`` only."""
    if before == after:
        return True
    return msgspec.structs.replace(before, **{field: getattr(after, field) for field in SOFT_FIELDS}) == after
