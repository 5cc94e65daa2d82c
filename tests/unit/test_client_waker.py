"""The Hazelcast client's reactor wake-up must not be lost (found by the soak test).

hazelcast-python-client 5.7 ``reactor._PipedWaker``: ``wake()`` (any thread) writes one byte to a
pipe unless ``awake`` is already set; ``handle_read()`` (reactor thread) clears ``awake`` and
*then* drains the pipe. A ``wake()`` landing between the two sets ``awake`` again and its byte is
drained at once: ``awake`` stays True with an empty pipe, every later ``wake()`` is skipped, and
each request from a non-reactor thread waits for the reactor's 10 ms poll timeout. Measured in the
soak: the worker's ~10 grid calls per bar went from ~1 ms to ~10 ms each for the rest of the
process's life (bar_to_write p50 5 ms -> 110 ms), at a random moment after seconds to minutes.

The invariant checked: after ``handle_read`` returns, ``awake`` implies a byte is waiting in the
pipe. obf_contract/reactor_fix.py (installed when the product's grid modules are imported)
drains before clearing the flag; without it this test fails.
"""

from __future__ import annotations

import select

import pytest
from hazelcast import reactor

import engine_adapter.grid  # noqa: F401 - a client fix would be applied on import
import obf_features_worker.service.grid  # noqa: F401 - idem


def _pipe_has_byte(waker: reactor._PipedWaker) -> bool:
    return bool(select.select([waker._read_fd], [], [], 0)[0])


def test_a_wake_during_handle_read_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    waker = reactor._PipedWaker({})
    try:
        waker.wake()  # a request was queued: the reactor's poll sees the byte
        assert waker.awake and _pipe_has_byte(waker)
        real_read = reactor.os.read
        calls = 0

        def read_after_a_concurrent_wake(fd: int, n: int) -> bytes:
            # Another thread queues a request while the reactor is inside handle_read.
            nonlocal calls
            if fd == waker._read_fd:
                calls += 1
                if calls == 1:
                    waker.wake()
            return real_read(fd, n)

        monkeypatch.setattr(reactor.os, "read", read_after_a_concurrent_wake)
        waker.handle_read()
        monkeypatch.setattr(reactor.os, "read", real_read)
        assert calls >= 1
        # Either the flag is clear (the next wake() writes a byte) or a byte is still waiting.
        assert not waker.awake or _pipe_has_byte(waker), "wake-up lost: awake=True with an empty pipe"
    finally:
        waker.close()
