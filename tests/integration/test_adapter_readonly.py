"""The adapter is read-only, proven by what it does against a real member (not by reading its
source): every call it makes on the client and on map proxies is recorded through its whole
life (start, seed, events, lookups, a re-seed, close) and must be on the read-only allowlist."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hazelcast.core import HazelcastJsonValue

from engine_adapter import AdapterConfig, HazelcastOBEngine
from tests.cluster import HzCluster
from tests.factories import bar_record

# Map operations that read or only register/unregister listeners.
READ_ONLY = frozenset({
    "blocking", "get", "get_all", "aggregate", "key_set", "entry_set", "values", "contains_key", "size",
    "add_entry_listener", "remove_entry_listener", "project", "is_empty",
})
CLIENT_READS = frozenset({"get_map", "lifecycle_service", "shutdown"})


class _Recorded:
    """Forwards to ``target`` and records the name of every method called (and of proxies it returns)."""

    def __init__(self, target: Any, calls: list[str], where: str) -> None:
        self._target, self._calls, self._where = target, calls, where

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(f"{self._where}.{name}")
            out = attr(*args, **kwargs)
            return _Recorded(out, self._calls, self._where) if name == "blocking" else out
        return call


class RecordingClient:
    """A real client whose maps record every call; other client attributes are recorded on use."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[str] = []

    def get_map(self, name: str) -> Any:
        self.calls.append("client.get_map")
        return _Recorded(self._client.get_map(name), self.calls, "map")

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            self.calls.append(f"client.{name}")
        return getattr(self._client, name)


def _writes(calls: list[str]) -> list[str]:
    return sorted({c for c in calls if (c.split(".")[-1] not in READ_ONLY if c.startswith("map.")
                                         else c.split(".", 1)[1] not in CLIENT_READS)})


def _put(m: Any, rec: dict[str, Any]) -> None:
    m.put(rec["bar_idx"], HazelcastJsonValue(orjson.dumps(rec).decode()))


def test_adapter_makes_only_read_calls_through_its_life(hz_cluster: HzCluster, map_suffix: str) -> None:
    name = "DOLPHIN_OBF_FEATURES" + map_suffix
    writer = hz_cluster.client()
    inner = hz_cluster.client()
    try:
        m = writer.get_map(name).blocking()
        for i in range(1, 4):
            _put(m, bar_record(i))
        client = RecordingClient(inner)
        eng = HazelcastOBEngine(AdapterConfig(cluster_name=hz_cluster.cluster_name, members=tuple(hz_cluster.members),
                                              map_name=name, max_wait_ms=2000), client=client)  # type: ignore[arg-type]
        try:
            assert eng.resolve(3).kind == "exact"  # seeded
            _put(m, bar_record(4))
            assert eng.step_live(["BTCUSDT"], 4).kind == "exact"  # delivered by the listener
            eng.get_placement("BTCUSDT")
            eng.get_signal("ETHUSDT")
            eng.get_market()
            eng.get_macro()
            eng._reader.seed("reseed")  # the re-seed path, run here instead of after a reconnect
        finally:
            eng.close()
        assert "map.add_entry_listener" in client.calls and "map.aggregate" in client.calls
        assert _writes(client.calls) == []
    finally:
        writer.shutdown()
        inner.shutdown()


@pytest.mark.parametrize("op", [lambda m: m.put(1, "x"), lambda m: m.blocking().remove(1),
                                lambda m: m.blocking().set(2, "y")])
def test_the_recorder_catches_a_write(hz_cluster: HzCluster, map_suffix: str, op: Callable[[Any], Any]) -> None:
    inner = hz_cluster.client()
    try:
        client = RecordingClient(inner)
        result = op(client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix))
        if hasattr(result, "result"):
            result.result()
        assert _writes(client.calls) != []
    finally:
        inner.shutdown()


def test_offline_engine_reads_the_map_read_only(hz_cluster: HzCluster, map_suffix: str) -> None:
    # OfflineOBEngine.from_map (paper trading over a range of the live map) is read-only too.
    from engine_adapter.offline import OfflineOBEngine

    name = "DOLPHIN_OBF_FEATURES" + map_suffix
    writer = hz_cluster.client()
    inner = hz_cluster.client()
    try:
        m = writer.get_map(name).blocking()
        recs = [bar_record(i) for i in range(1, 4)]
        for rec in recs:
            _put(m, rec)
        client = RecordingClient(inner)
        eng = OfflineOBEngine.from_map(client, name)  # type: ignore[arg-type]
        assert eng.preload(recs[0]["bar_ts"], recs[-1]["bar_ts"] + 1) == 3
        assert eng.step_live(["BTCUSDT"], 3).kind == "exact"
        eng.get_placement("BTCUSDT")
        eng.get_market()
        assert "map.entry_set" in client.calls
        assert _writes(client.calls) == []
    finally:
        writer.shutdown()
        inner.shutdown()
