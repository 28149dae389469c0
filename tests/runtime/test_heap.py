"""The heap trimmer, on this process's real glibc heap."""

from __future__ import annotations

import asyncio
import ctypes

import pytest

from agent.runtime import heap
from agent.runtime.heap import Heap, keep_trimmed, resident


def glibc() -> Heap:
    found = Heap.glibc()
    assert found is not None, "Debian's Python runs on glibc"
    return found


def fragment() -> list[bytearray]:
    """About 36 MB freed in 4 KB pieces between kept ones: glibc cannot shrink its heap's top."""
    pieces = [bytearray(4000) for _ in range(10_000)]
    return pieces[::16]


def test_a_burst_s_freed_pages_go_back_to_the_system() -> None:
    h = glibc()
    kept = fragment()
    assert h.free() > 30 * 2**20
    before = resident()
    released = h.trim()
    assert released > 20 * 2**20, f"released {released / 2**20:.1f} MB"
    assert resident() < before - 20 * 2**20
    assert len(kept) == 625  # the kept pieces are untouched
    assert all(piece == bytearray(4000) for piece in kept)


def test_little_free_means_no_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    h = glibc()
    calls: list[int] = []
    monkeypatch.setattr(h, "_trim", calls.append)
    assert h.trim(worth=2**62) == 0
    assert calls == []
    assert h.trim(worth=0) == 0  # trimmed (nothing freed here to give back)
    assert calls == [0]


def test_without_glibc_there_is_no_trimmer(monkeypatch: pytest.MonkeyPatch) -> None:
    class Musl:
        def __init__(self, name: None) -> None:
            assert name is None  # the C library the process runs on

        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", Musl)
    assert Heap.glibc() is None


async def test_keep_trimmed_checks_periodically(monkeypatch: pytest.MonkeyPatch) -> None:
    h = glibc()
    checks: list[int] = []
    third = asyncio.Event()
    loop = asyncio.get_running_loop()

    def trim(worth: int = heap.WORTH) -> int:  # runs in a worker thread
        checks.append(worth)
        if len(checks) == 3:
            loop.call_soon_threadsafe(third.set)
        return 1

    monkeypatch.setattr(h, "trim", trim)
    task = asyncio.create_task(keep_trimmed(h, every=0.01))
    await asyncio.wait_for(third.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert checks[:3] == [heap.WORTH] * 3
