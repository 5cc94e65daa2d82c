"""The member configurations shipped in deploy/: every map backed up, production on >= 2 members."""

from __future__ import annotations

from pathlib import Path

import yaml

from obf_contract.cluster import DEFAULT_CLUSTER_NAME, FEATURES_MAP, HEALTH_MAP, INPUT_MAP, LATEST_MAP, STATE_MAP

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "hazelcast" / "hazelcast.yaml"
PRODUCTION = ROOT / "deploy" / "hazelcast" / "hazelcast-production.yaml"
OUR_MAPS = (INPUT_MAP, FEATURES_MAP, LATEST_MAP, HEALTH_MAP, STATE_MAP)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["hazelcast"]


def test_every_map_has_a_synchronous_backup_in_both_configs() -> None:
    for path in (LOCAL, PRODUCTION):
        maps = load(path)["map"]
        for name in OUR_MAPS:
            cfg = maps[name + "*"]
            assert cfg["backup-count"] >= 1 and cfg.get("async-backup-count", 0) == 0, (path.name, name)


def test_production_runs_at_least_two_members_on_separate_hosts() -> None:
    cfg = load(PRODUCTION)
    members = cfg["network"]["join"]["tcp-ip"]["member-list"]
    assert len(members) >= 2 and len({m.split(":")[0] for m in members}) == len(members)
    assert cfg["partition-group"] == {"enabled": True, "group-type": "HOST_AWARE"}
    assert cfg["properties"]["hazelcast.shutdownhook.policy"] == "GRACEFUL"
    assert cfg["cluster-name"] == DEFAULT_CLUSTER_NAME
    assert cfg["map"] == load(LOCAL)["map"], "production and local map configs drifted"


def test_the_local_member_joins_the_listed_peers() -> None:
    # `obf-features member start --peers` and the test fixtures' 3-member clusters pass obf.members
    assert load(LOCAL)["network"]["join"]["tcp-ip"]["member-list"] == ["${obf.members}"]


def test_the_event_queue_is_bounded_below_the_heap_in_both_configs() -> None:
    # ~1 KB per snapshot event: the default 1,000,000 could exceed a 512 MiB member's heap.
    for path in (LOCAL, PRODUCTION):
        assert int(load(path)["properties"]["hazelcast.event.queue.capacity"]) <= 200_000, path.name
