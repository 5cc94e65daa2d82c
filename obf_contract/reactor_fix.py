"""A fix for a lost wake-up in hazelcast-python-client's reactor (found by our soak test).

``hazelcast.reactor._PipedWaker`` wakes the reactor's poll when another thread queues a request:
``wake()`` writes one byte to a pipe unless ``awake`` is already set, and ``handle_read()`` (on
the reactor thread) clears ``awake`` and *then* drains the pipe. A ``wake()`` landing between the
two sets ``awake`` again and its byte is drained at once: ``awake`` stays True over an empty pipe,
every later ``wake()`` is skipped, and each request from a non-reactor thread then waits for the
reactor's poll timeout (10 ms) for the rest of the process's life (client 5.7.0).

The fix drains first and clears the flag after: a ``wake()`` during the drain skips its byte, but
its request is already queued and the reactor polls its connections again as soon as
``handle_read`` returns, so nothing waits. Installed once, when a module of ours that builds
clients is imported (worker, inspection tools, adapter); it touches only that method, and checks
the client still has it. Imports stdlib + hazelcast only, so the adapter may import it.
"""

from __future__ import annotations

import logging
import os

from hazelcast import reactor

log = logging.getLogger(__name__)

_installed = False


def _drain_then_clear(self: reactor._PipedWaker) -> None:
    try:
        while len(os.read(self._read_fd, 4096)) == 4096:
            pass
    except OSError:
        pass
    self.awake = False


def install() -> bool:
    """Patch ``_PipedWaker.handle_read`` (idempotent). False if this client has no such method."""
    global _installed
    if _installed:
        return True
    waker = getattr(reactor, "_PipedWaker", None)
    if waker is None or not callable(getattr(waker, "handle_read", None)):
        log.warning("reactor fix not applied: hazelcast.reactor._PipedWaker.handle_read not found")
        return False
    waker.handle_read = _drain_then_clear
    _installed = True
    return True


install()
