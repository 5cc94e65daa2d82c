"""How a long-running command stops: signals, a closed output, a dead parent.

One rule for the worker, ``feed``, ``watch`` and ``demo`` (docs/operations.md, issue 18):

* SIGINT, SIGTERM and SIGHUP (the terminal closed) ask for a clean stop: the command finishes
  what it is doing, releases what it holds and exits ``EXIT_OK`` (0).
* A second such signal while stopping forces the exit (``EXIT_FAILED``, 1) at once.
* A closed output (``| head`` exited, the terminal went away) is a stop too, never a traceback:
  the command stops cleanly and exits ``EXIT_OUTPUT_CLOSED`` (141 = 128 + SIGPIPE, what a
  shell reports for a process its pipe killed).
* Children a command starts die with it even if it is SIGKILLed (``die_with_parent``, a Linux
  parent-death signal), except the deliberate daemon ``obf-features member start``.

``capture_signals`` is modelled on uvicorn's ``Server.capture_signals``: handlers installed on
entry (main thread only), the previous ones restored on exit, and a captured signal passed on
to a previous *Python* handler (an enclosing capture), never re-raised into the default action
(nor into Python's KeyboardInterrupt): the stop it asked for has happened, and the documented
exit code says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_OUTPUT_CLOSED = 128 + signal.SIGPIPE  # 141

OUTPUT_CLOSED = "output-closed"  # the stop reason when stdout/stderr is gone

# A write failing with these means the reader went away (a pipe's reader exited, the terminal hung
# up): a stop, not an error. Others (a full disk, say) are errors and handled as such.
_OUTPUT_GONE = (errno.EPIPE, errno.EIO)

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class StopRequest:
    """A stop asked for once, by whoever comes first (signal, closed output, the command itself).

    ``event`` is set on the first request; ``reason`` names it (``SIGTERM``, ``output-closed``,
    ...). ``on_stop`` callbacks run once, on the requesting thread (never the signal handler's
    frame: see ``capture_signals``). Thread-safe.
    """

    def __init__(self, on_stop: Callable[[str], None] | None = None) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self.output_closed = False
        self._on_stop = on_stop
        self._lock = threading.Lock()

    def __call__(self, reason: str) -> None:
        self.request(reason)

    def request(self, reason: str) -> None:
        """Ask for the stop; only the first reason is kept and only the first call runs ``on_stop``."""
        with self._lock:
            first = self.reason is None
            if first:
                self.reason = reason
        if first:
            log.info("stop requested reason=%s", reason)
            self.event.set()
            if self._on_stop is not None:
                self._on_stop(reason)

    def is_set(self) -> bool:
        return self.event.is_set()

    def output_lost(self) -> None:
        """Our stdout is gone (broken pipe, hung-up terminal): silence it and ask for the stop."""
        self.output_closed = True
        silence_stdout()
        self.request(OUTPUT_CLOSED)

    def exit_code(self, failed: bool = False) -> int:
        """The documented exit code: 1 if ``failed``, 141 if the output closed, else 0."""
        if failed:
            return EXIT_FAILED
        return EXIT_OUTPUT_CLOSED if self.output_closed else EXIT_OK


def _force_exit(signame: str) -> None:
    log.warning("second %s while stopping: exiting now", signame)
    os._exit(EXIT_FAILED)


@contextlib.contextmanager
def capture_signals(stop: Callable[[str], None], *, signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
                    force: Callable[[str], None] = _force_exit) -> Iterator[list[signal.Signals]]:
    """Within the block the first of ``signals`` calls ``stop(signal name)`` and a second calls
    ``force(signal name)`` (default: log and ``os._exit(1)``). Yields the list of signals
    received. On exit the previous handlers are restored, and each captured signal is passed on
    to a previous handler that was a Python function (an enclosing capture); a default or ignore
    disposition, or Python's KeyboardInterrupt handler, is not re-raised: the stop it asked for is done.

    ``stop`` runs on a helper thread: the interrupted main thread may hold a lock ``stop`` needs
    (e.g. inside ``Event.wait``). Outside the main thread nothing is installed (Python allows
    handlers only there), as in uvicorn.
    """
    received: list[signal.Signals] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        received.append(sig)
        if len(received) > 1:
            force(sig.name)
            return
        threading.Thread(target=stop, args=(sig.name,), name="stop-request", daemon=True).start()

    previous: dict[signal.Signals, Handler] = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    for sig in received[:1]:
        old = previous.get(sig)
        # Python's own SIGINT handler would raise KeyboardInterrupt after a clean stop: not passed on.
        if callable(old) and old is not signal.default_int_handler:
            old(sig, None)


def output_gone(exc: BaseException | None) -> bool:
    """True if ``exc`` says the output's reader is gone (EPIPE, or EIO from a hung-up terminal)."""
    return isinstance(exc, OSError) and exc.errno in _OUTPUT_GONE


def silence_stdout() -> None:
    """Point fd 1 at /dev/null so later prints (and the interpreter's final flush) do not raise
    or print "Exception ignored ... BrokenPipeError" (the recipe of the Python signal docs)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def say(stop: StopRequest, text: str = "", **kwargs: Any) -> bool:
    """``print`` for a long-running command: a closed stdout (EPIPE, or EIO from a hung-up
    terminal) becomes ``stop.output_lost()`` instead of a traceback. False once output is lost."""
    if stop.output_closed:
        return False
    try:
        print(text, flush=True, **kwargs)
        return True
    except OSError as exc:
        if not output_gone(exc):
            raise
        stop.output_lost()
        return False


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when the process that
    started it dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``; kept across ``exec``). The
    signal fires when the *thread* that forked exits: start children from a thread that lives as
    long as the parent (the main thread). Elsewhere (not Linux) it does nothing."""
    parent = os.getpid()

    def preexec() -> None:
        if not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return  # best effort: the parent's ordered stop still applies
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec
