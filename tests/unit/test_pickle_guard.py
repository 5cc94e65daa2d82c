"""The pickle guard: pickled map values are never unpickled, and nothing of ours gets pickled."""

from __future__ import annotations

from pathlib import Path

import pytest
from hazelcast.config import Config
from hazelcast.core import HazelcastJsonValue
from hazelcast.errors import HazelcastSerializationError
from hazelcast.serialization.service import SerializationServiceV1

from obf_contract.pickle_guard import RefusedPickle, is_guarded, refuse_pickle
from obf_features_worker.engine.ingest import SnapshotBook


class Evil:
    """Unpickling this creates a file: the proof that code ran."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_an_unguarded_client_would_run_the_payload(tmp_path: Path) -> None:
    """The hazard itself (so the next test proves something): plain client serialization unpickles."""
    Evil.path = str(tmp_path / "ran")
    service = SerializationServiceV1(Config())
    assert not is_guarded(service)
    service.to_object(service.to_data(Evil())).close()
    assert Path(Evil.path).exists()


def test_guarded_service_reads_a_marker_and_refuses_to_pickle(tmp_path: Path) -> None:
    Evil.path = str(tmp_path / "ran")
    writer = SerializationServiceV1(Config())  # a foreign, unguarded writer
    data = writer.to_data(Evil())
    reader = SerializationServiceV1(Config())
    refuse_pickle(reader)
    refuse_pickle(reader)  # idempotent
    assert is_guarded(reader)
    value = reader.to_object(data)
    assert isinstance(value, RefusedPickle) and value.size > 0
    assert not Path(Evil.path).exists()
    with pytest.raises(HazelcastSerializationError, match="refusing to pickle"):
        reader.to_data({"a": 1})  # a dict would have been pickled silently
    with pytest.raises(HazelcastSerializationError):
        reader.to_data(Evil())
    # what the product stores still works
    for v in ("text", 7, 1.5, True, None, HazelcastJsonValue('{"a": 1}')):
        back = reader.to_object(reader.to_data(v))
        assert (back.to_string() if isinstance(back, HazelcastJsonValue) else back) == (
            v.to_string() if isinstance(v, HazelcastJsonValue) else v)


def test_guard_after_a_type_was_already_bound_to_pickle() -> None:
    service = SerializationServiceV1(Config())
    service.to_data({"a": 1})  # binds dict -> pickle in the type registry
    refuse_pickle(service)
    with pytest.raises(HazelcastSerializationError):
        service.to_data({"a": 1})


def test_the_ingest_path_rejects_the_marker() -> None:
    book = SnapshotBook(clock=lambda: 1.7e9)
    assert not book.offer("asset_BTCUSDT_ob", RefusedPickle(120))
    assert book.stats()["rejected"] == {"bad_json": 1}


def test_unexpected_internals_fail_loudly() -> None:
    with pytest.raises(RuntimeError, match="unprotected"):
        refuse_pickle(object())
