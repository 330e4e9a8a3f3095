"""Retries of a failed call: which calls may be sent again, and the budget that keeps
retries from multiplying a struggling backend's load.

Safe to send again (``repeatable``): ``resources/read``, ``prompts/get``, the list
calls the catalog makes, and a ``tools/call`` of a tool the backend annotates
``readOnlyHint`` or ``idempotentHint`` (``safe_tools``, learnt from the backend's
own ``tools/list`` answers). Any call that never left the gateway
(``faults.never_sent``) may be sent again too, whatever it is. Everything else
(a tool that may have side effects) is never repeated: the backend may have
acted on it before the answer was lost.

The budget (``RetryBudget``): retries in the last 10 s stay within
``retry_ratio`` x the calls of the last 10 s, plus ``retry_floor``. So a backend
that fails everything sees at most 20% more traffic (the default ratio), not
``retries`` times as much, and a quiet one can still retry a few calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.backends.window import Window
from gateway.protocol.jsonrpc import UNSET, decode_any

__all__ = ["BUDGET_SPAN", "REPEATABLE_METHODS", "RetryBudget", "repeatable", "safe_tools_of"]

BUDGET_SPAN = 10.0
"""Seconds of calls and retries the budget compares."""

REPEATABLE_METHODS = frozenset(
    {"resources/read", "prompts/get", "tools/list", "prompts/list", "resources/list", "resources/templates/list"}
)
"""Methods whose calls may always be sent again: they only read."""

_CALLS, _RETRIES = 0, 1


class RetryBudget:
    """Retries allowed: at most ``ratio`` x calls + ``floor`` over the last ``BUDGET_SPAN`` seconds."""

    __slots__ = ("ratio", "floor", "clock", "window")

    def __init__(self, ratio: float, floor: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.floor = floor
        self.clock = clock
        self.window = Window(BUDGET_SPAN, 2)

    def note_call(self, now: float | None = None) -> None:
        """One call was made (its first attempt; retries are counted by ``spend``); ``now``: the
        clock's time, if the caller has it."""
        self.window.add(self.clock() if now is None else now, _CALLS)

    def spend(self) -> bool:
        """Take one retry from the budget: False (nothing taken) when it would go over."""
        now = self.clock()
        calls, retries = self.window.totals(now)
        if retries + 1 > self.ratio * calls + self.floor:
            return False
        self.window.add(now, _RETRIES)
        return True


def repeatable(method: str, params: Any, safe_tools: frozenset[str]) -> bool:
    """Whether a call may be sent again after a failure: a method that only reads, or a
    ``tools/call`` of a tool in ``safe_tools`` (``params``: its raw params)."""
    if method in REPEATABLE_METHODS:
        return True
    if method != "tools/call" or not safe_tools or params is UNSET:
        return False
    try:
        name = decode_any(params).get("name")
    except (ValueError, AttributeError):
        return False
    return isinstance(name, str) and name in safe_tools


def safe_tools_of(tools: Iterable[Any]) -> set[str]:
    """The names of the tools (``tools/list`` items) annotated ``readOnlyHint`` or ``idempotentHint``."""
    safe = set()
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            continue
        notes = tool.get("annotations")
        if isinstance(notes, dict) and (notes.get("readOnlyHint") is True or notes.get("idempotentHint") is True):
            safe.add(tool["name"])
    return safe
