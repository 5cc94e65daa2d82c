"""Stop the Hazelcast Python client from unpickling map values (and from pickling ours).

hazelcast-python-client deserialises any value stored with type id -120 (``PYTHON_TYPE_PICKLE``)
with ``pickle.loads``, eagerly, including the values of entry events before a listener callback
runs. Anyone who can write to ``DOLPHIN_FEATURES`` could therefore run code in the worker (and
in the trader's adapter, through ``DOLPHIN_OBF_FEATURES``); measured against a 5.5 member with
client 5.7. It also pickles, silently, any value of a type it has no serializer for.

``refuse_pickle(client)`` replaces that serializer: a pickled value is read as a
``RefusedPickle`` marker (never unpickled; the ingest path rejects it as ``bad_json``), and
writing a value that would be pickled raises ``HazelcastSerializationError``. It reaches into
the client's serialization registry (no public hook exists), so it verifies the result and
raises ``RuntimeError`` if a client version no longer fits, rather than leave a hole open.
Call it right after building every client, before adding listeners.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hazelcast.errors import HazelcastSerializationError
from hazelcast.serialization.serialization_const import PYTHON_TYPE_PICKLE
from hazelcast.serialization.serializer import BaseSerializer, PythonObjectSerializer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RefusedPickle:
    """Stands in for a map value that arrived pickled; ``size`` is its payload length in chars
    (-1 if unreadable). It is never unpickled."""

    size: int


class _RefusingPickleSerializer(BaseSerializer):
    def read(self, inp: Any) -> RefusedPickle:
        try:
            size = len(inp.read_string())
        except Exception:  # noqa: BLE001 - malformed input is still only a marker
            size = -1
        return RefusedPickle(size)

    def write(self, out: Any, obj: Any) -> None:
        raise HazelcastSerializationError(
            f"refusing to pickle a {type(obj).__name__}: store JSON text or HazelcastJsonValue"
        )

    def get_type_id(self) -> int:
        return PYTHON_TYPE_PICKLE


def refuse_pickle(client_or_service: Any) -> None:
    """Install the guard on a HazelcastClient (or its serialization service). Idempotent.

    Raises RuntimeError if the client's internals do not look as expected or the guard is not
    effective afterwards.
    """
    service = getattr(client_or_service, "_serialization_service", client_or_service)
    registry = getattr(service, "_registry", None)
    needed = ("_python_serializer", "_id_dict", "_type_dict", "_registration_lock", "serializer_by_type_id")
    if registry is None or not all(hasattr(registry, name) for name in needed):
        raise RuntimeError("pickle guard: unexpected hazelcast client internals; refusing to run unprotected")
    guard = _RefusingPickleSerializer()
    with registry._registration_lock:
        registry._python_serializer = guard
        registry._id_dict[PYTHON_TYPE_PICKLE] = guard
        for obj_type, serializer in list(registry._type_dict.items()):
            if isinstance(serializer, PythonObjectSerializer):
                registry._type_dict[obj_type] = guard
    if hasattr(service, "_python_serializer"):
        service._python_serializer = guard
    if not is_guarded(service):
        raise RuntimeError("pickle guard: installed but not effective; refusing to run unprotected")
    log.debug("pickle guard installed")


def is_guarded(client_or_service: Any) -> bool:
    """True if pickled values are refused on read and unknown types on write."""
    service = getattr(client_or_service, "_serialization_service", client_or_service)
    registry = getattr(service, "_registry", None)
    if registry is None:
        return False
    try:
        reader = registry.serializer_by_type_id(PYTHON_TYPE_PICKLE)
        writer = registry.serializer_for(_Probe())
    except Exception:  # noqa: BLE001 - anything unexpected means: not known to be guarded
        return False
    return isinstance(reader, _RefusingPickleSerializer) and isinstance(writer, _RefusingPickleSerializer)


class _Probe:
    """A type no serializer knows: the client would fall back to pickling it."""
