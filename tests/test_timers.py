"""Coarse deadlines: fire after their delay (within one resolution), never after discard,
stop ticking when nothing is pending, and one failing callback does not stop the rest."""

from __future__ import annotations

import asyncio

from gateway.timers import Deadlines


async def test_fires_after_the_delay_and_not_before() -> None:
    deadlines = Deadlines(resolution=0.02)
    fired: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadlines.add("a", 0.1, lambda arg: fired.append((arg, loop.time() - start)), "a")
    await asyncio.sleep(0.05)
    assert fired == []
    await asyncio.sleep(0.15)
    assert [name for name, _ in fired] == ["a"]
    assert 0.1 <= fired[0][1] < 0.2
    assert len(deadlines) == 0


async def test_discard_prevents_the_call_and_the_tick_stops() -> None:
    deadlines = Deadlines(resolution=0.01)
    fired: list[object] = []
    deadlines.add("a", 0.03, fired.append, "a")
    deadlines.add("b", 0.03, fired.append, "b")
    deadlines.discard("a")
    deadlines.discard("never-added")
    await asyncio.sleep(0.1)
    assert fired == ["b"]
    assert deadlines._tick is None  # nothing pending: no wake-ups


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    deadlines = Deadlines(resolution=0.01)
    fired: list[object] = []

    def boom(_: object) -> None:
        raise RuntimeError("callback bug")

    deadlines.add("bad", 0.01, boom)
    deadlines.add("good", 0.01, fired.append, "good")
    await asyncio.sleep(0.08)
    assert fired == ["good"]
