"""Against a real member: a pickled value written by a foreign client reaches a guarded
listener and reader as a RefusedPickle marker and never runs."""

from __future__ import annotations

import threading
from pathlib import Path

from obf_contract.pickle_guard import RefusedPickle
from obf_features_worker.engine.ingest import SnapshotBook
from tests.cluster import HzCluster


class Evil:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_event_value_is_refused(hz_cluster: HzCluster, map_suffix: str, tmp_path: Path) -> None:
    Evil.path = str(tmp_path / "ran")
    name = "DOLPHIN_FEATURES" + map_suffix
    writer = hz_cluster.foreign_client()  # unguarded: stands for any client that can write the map
    reader = hz_cluster.client()  # ours: guarded by make_client
    try:
        book = SnapshotBook(clock=lambda: 1.7e9)
        seen: list[object] = []
        done = threading.Event()

        def on_event(event) -> None:
            seen.append(event.value)
            book.offer(event.key, event.value)
            done.set()

        m = reader.get_map(name).blocking()
        m.add_entry_listener(include_value=True, added_func=on_event, updated_func=on_event)
        writer.get_map(name).blocking().put("asset_EVILUSDT_ob", Evil())
        assert done.wait(10.0), "no event arrived"
        assert isinstance(seen[0], RefusedPickle)
        assert isinstance(m.get("asset_EVILUSDT_ob"), RefusedPickle)
        assert book.stats()["rejected"] == {"bad_json": 1}
        assert not Path(Evil.path).exists()
        assert reader.lifecycle_service.is_running()
    finally:
        writer.shutdown()
        reader.shutdown()
