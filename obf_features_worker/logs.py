"""Logging set-up for the long-running commands (worker, feeder): text or JSON lines on stderr,
plus ``RateLimiter`` for warnings that could otherwise repeat every bar.

Snapshot rejects have their own per-reason limiter (``ingest.RejectStats``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Third-party loggers kept at WARNING (their INFO lines are per-connection chatter).
_QUIET = ("hazelcast", "numba")
# The client logs every reconnect attempt at WARNING, with a traceback (every few seconds while a
# member is down); the worker logs its own connect/disconnect lines, so these are rate-limited
# and shortened to one line.
_RECONNECT_PREFIXES = ("Unable to get live cluster connection", "Error during initial connection")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601 UTC), level, logger, msg (+ exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(obj, default=str).decode()


class _ClosableStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """A stream handler that treats a closed stream (EPIPE, EIO from a hung-up terminal) as the
    end of the output: it calls ``on_closed`` once (on a helper thread: it may be the reactor
    thread that logged) and writes to /dev/null from then on, instead of a traceback per line."""

    def __init__(self, stream: IO[str], on_closed: Callable[[], None]) -> None:
        super().__init__(stream)
        self._on_closed = on_closed
        self._closed = False

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not (isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.EIO)):
            super().handleError(record)
            return
        if not self._closed:
            self._closed = True
            self.setStream(open(os.devnull, "w"))  # closed with the handler
            threading.Thread(target=self._on_closed, name="output-closed", daemon=True).start()

    def close(self) -> None:
        if self._closed:
            with contextlib.suppress(OSError):
                self.stream.close()  # our /dev/null, never the caller's stream
        super().close()


def setup_logging(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None,
                  on_output_closed: Callable[[], None] | None = None) -> None:
    """Configure the root logger once for a command: ``level`` name, ``fmt`` 'text' or 'json'.
    ``on_output_closed``: called once if the stream closes (a long-running command's stop)."""
    out = stream if stream is not None else sys.stderr
    handler: logging.StreamHandler[IO[str]] = (logging.StreamHandler(out) if on_output_closed is None
                                               else _ClosableStreamHandler(out, on_output_closed))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    conn_logger = logging.getLogger("hazelcast.connection")
    for f in list(conn_logger.filters):
        if isinstance(f, _ReconnectFilter):
            conn_logger.removeFilter(f)
    conn_logger.addFilter(_ReconnectFilter())


class _ReconnectFilter(logging.Filter):
    """Lets one line per kind of client reconnect-attempt message through per minute, without
    its traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._limiter = RateLimiter(60.0)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, str):
            for prefix in _RECONNECT_PREFIXES:
                if msg.startswith(prefix):
                    if self._limiter.allow(prefix) is None:
                        return False
                    if record.exc_info and record.exc_info[1] is not None:
                        detail = repr(record.exc_info[1]).replace("%", "%%")
                        record.msg = f"{msg} ({detail})"
                    record.exc_info = None
                    record.exc_text = None
                    return True
        return True


class RateLimiter:
    """Allows one event per ``interval_s`` per key and counts what it suppressed in between.

    ``allow(key)`` returns None when the event should be suppressed, else the number of events
    suppressed since the last allowed one (to put in the log line). Thread-safe.
    """

    def __init__(self, interval_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = float(interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)

    def reset(self, key: str) -> int:
        """Forget ``key`` (e.g. when an outage ends) and return how many events were suppressed."""
        with self._lock:
            self._last.pop(key, None)
            return self._suppressed.pop(key, 0)
