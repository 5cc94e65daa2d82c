"""``obf_features_worker.lifecycle``: the signal capture (install, first signal stops, second
forces, previous handlers restored and passed on), the stop request, output-closed handling in
``say`` and in the logging handler, and the parent-death signal (with real processes)."""

from __future__ import annotations

import errno
import io
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from obf_features_worker import lifecycle
from obf_features_worker.logs import setup_logging
from tests.integration.feeder import wait_for


class Calls:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.event = threading.Event()

    def __call__(self, name: str) -> None:
        self.names.append(name)
        self.event.set()


def test_capture_installs_and_restores_the_previous_handlers() -> None:
    before = {sig: signal.getsignal(sig) for sig in lifecycle.STOP_SIGNALS}
    with lifecycle.capture_signals(Calls()):
        for sig in lifecycle.STOP_SIGNALS:
            assert signal.getsignal(sig) is not before[sig], sig
    assert {sig: signal.getsignal(sig) for sig in lifecycle.STOP_SIGNALS} == before


@pytest.mark.parametrize("sig", lifecycle.STOP_SIGNALS)
def test_first_signal_asks_for_the_stop_with_its_name(sig: signal.Signals) -> None:
    stop, force = Calls(), Calls()
    with lifecycle.capture_signals(stop, force=force) as received:
        os.kill(os.getpid(), sig)
        assert stop.event.wait(10), "stop never called"
    assert stop.names == [sig.name] and force.names == [] and received == [sig]


def test_second_signal_forces() -> None:
    stop, force = Calls(), Calls()
    with lifecycle.capture_signals(stop, force=force):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.event.wait(10)
        os.kill(os.getpid(), signal.SIGHUP)
        assert force.event.wait(10), "force never called"
    assert stop.names == ["SIGTERM"] and force.names == ["SIGHUP"]


def test_captured_signal_is_passed_to_an_enclosing_capture() -> None:
    outer, inner = Calls(), Calls()
    with lifecycle.capture_signals(outer):
        with lifecycle.capture_signals(inner):
            os.kill(os.getpid(), signal.SIGTERM)
            assert inner.event.wait(10)
        assert outer.event.wait(10), "the enclosing capture never heard of the stop"
    assert inner.names == outer.names == ["SIGTERM"]


def test_python_sigint_handler_is_not_re_raised_after_a_clean_stop() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    stop = Calls()
    with lifecycle.capture_signals(stop):  # no KeyboardInterrupt on the way out
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.event.wait(10)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[Any] = []

    def body() -> None:
        with lifecycle.capture_signals(Calls()) as received:
            seen.append((signal.getsignal(signal.SIGTERM), received))

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert seen == [(before, [])]


def test_stop_request_keeps_the_first_reason_and_calls_on_stop_once() -> None:
    calls = Calls()
    stop = lifecycle.StopRequest(on_stop=calls)
    assert not stop.is_set() and stop.exit_code() == lifecycle.EXIT_OK
    stop.request("SIGHUP")
    stop.request("SIGTERM")
    assert stop.is_set() and stop.reason == "SIGHUP" and calls.names == ["SIGHUP"]
    assert stop.exit_code() == 0 and stop.exit_code(failed=True) == 1


def test_say_turns_a_closed_stdout_into_a_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, _s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    silenced: list[bool] = []
    monkeypatch.setattr(lifecycle, "silence_stdout", lambda: silenced.append(True))
    monkeypatch.setattr(sys, "stdout", Broken())
    stop = lifecycle.StopRequest()
    assert lifecycle.say(stop, "frame") is False
    assert stop.reason == lifecycle.OUTPUT_CLOSED and silenced == [True]
    assert stop.exit_code() == lifecycle.EXIT_OUTPUT_CLOSED == 141
    assert lifecycle.say(stop, "again") is False and silenced == [True]  # nothing more is tried


def test_log_handler_reports_a_closed_stream_once_and_goes_quiet() -> None:
    class Closed(io.StringIO):
        def write(self, _s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    calls = Calls()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    errors = io.StringIO()
    try:
        setup_logging("INFO", stream=Closed(), on_output_closed=lambda: calls("closed"))
        real_stderr, sys.stderr = sys.stderr, errors  # where logging would print its traceback
        try:
            for i in range(3):
                logging.getLogger("test.lifecycle").info("line %d", i)
        finally:
            sys.stderr = real_stderr
        assert calls.event.wait(10)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    assert calls.names == ["closed"] and errors.getvalue() == ""


# The parent starts a child with the parent-death signal, prints its pid and blocks; the test
# SIGKILLs the parent (no handler runs) and the child must go too.
_PARENT = """
import subprocess, sys, time
from obf_features_worker import lifecycle
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         preexec_fn=lifecycle.die_with_parent() if sys.argv[1] == "on" else None)
print(child.pid, flush=True)
time.sleep(600)
"""


def _child_of_killed_parent(mode: str) -> tuple[int, subprocess.Popen[str]]:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, mode], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(10)
    return child, parent


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_child_dies_with_a_sigkilled_parent() -> None:
    child, _ = _child_of_killed_parent("on")
    wait_for(lambda: _gone(child), 10, "the child to die with its parent")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_without_it_the_child_outlives_the_parent() -> None:
    # The control case: what the demo's parts did before (so the test above can fail).
    child, _ = _child_of_killed_parent("off")
    try:
        assert not _gone(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_other_write_errors_are_errors_not_a_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    class Full(io.StringIO):
        def write(self, _s: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys, "stdout", Full())
    stop = lifecycle.StopRequest()
    with pytest.raises(OSError, match="No space"):
        lifecycle.say(stop, "frame")
    assert not stop.is_set()
    assert lifecycle.output_gone(BrokenPipeError(errno.EPIPE, "x")) and lifecycle.output_gone(OSError(errno.EIO, "x"))
    assert not lifecycle.output_gone(OSError(errno.ENOSPC, "x")) and not lifecycle.output_gone(None)
