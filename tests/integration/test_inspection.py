"""Inspection against a real member: every statement of deploy/sql/obf_mappings.sql (with a running
worker, and again on known data with exact expectations), `obf-features status` exit codes,
`obf-features watch` (--once and live, listener-driven) and `obf-features plot` from the map."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hazelcast.core import HazelcastJsonValue

from obf_contract.record import asset_view
from obf_features_worker import cli
from obf_features_worker.dev.member import free_port
from obf_features_worker.inspection.sql import StatementKind, apply_statements, load_statements, map_renames
from obf_features_worker.service.grid import InspectionReader
from tests.cluster import HzCluster
from tests.inspection_records import engine_records, health_doc, with_producer
from tests.integration.feeder import REPO_ROOT, TestFeeder, WorkerProcess, wait_for

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "1000SHIBUSDT")
LATEST_SIGNAL = ("imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry", "withdrawal_velocity")
LATEST_PLACEMENT = ("depth_1pct_usd", "depth_quality", "fill_probability", "spread_proxy_bps")


def _json(value: Any) -> Any:
    if isinstance(value, HazelcastJsonValue):
        return value.loads()
    return json.loads(value) if isinstance(value, str) else value


def _maps(suffix: str) -> dict[str, str]:
    return {k: k + suffix for k in ("DOLPHIN_FEATURES", "DOLPHIN_OBF_FEATURES", "DOLPHIN_OBF_HEALTH",
                                    "DOLPHIN_OBF_LATEST")}


def _cluster_args(cluster: HzCluster, suffix: str) -> list[str]:
    return ["--members", ",".join(cluster.members), "--cluster", cluster.cluster_name, "--map-suffix", suffix]


def _statements(suffix: str):
    m = _maps(suffix)
    return load_statements(rename=map_renames(m["DOLPHIN_OBF_FEATURES"], m["DOLPHIN_OBF_HEALTH"],
                                              m["DOLPHIN_OBF_LATEST"], view_suffix=suffix))


def _rows(reader: InspectionReader, text: str) -> list[dict[str, Any]]:
    names, rows = reader.sql(text, timeout_s=60)
    return [dict(zip(names, r, strict=True)) for r in rows]


# --- a running pipeline: feeder thread + worker subprocess ------------------------------------


class Pipeline:
    def __init__(self, cluster: HzCluster, suffix: str, feeder: TestFeeder, worker: WorkerProcess,
                 worker_id: str, client: Any) -> None:
        self.cluster, self.suffix, self.feeder, self.worker = cluster, suffix, feeder, worker
        self.worker_id, self.client = worker_id, client
        self.maps = _maps(suffix)

    def health(self) -> dict[str, Any] | None:
        v = self.client.get_map(self.maps["DOLPHIN_OBF_HEALTH"]).blocking().get(self.worker_id)
        return None if v is None else _json(v)

    def record(self, bar_idx: int) -> dict[str, Any]:
        v = self.client.get_map(self.maps["DOLPHIN_OBF_FEATURES"]).blocking().get(bar_idx)
        assert v is not None, f"bar {bar_idx} not in the features map"
        return _json(v)


@pytest.fixture(scope="module")
def pipeline(hz_cluster: HzCluster, tmp_path_factory) -> Pipeline:
    suffix = "_T" + uuid.uuid4().hex[:10].upper()
    client = hz_cluster.client()
    feeder = TestFeeder(client, "DOLPHIN_FEATURES" + suffix, SYMBOLS).start()
    worker_id = "t-inspect" + suffix
    env = {"HZ_MEMBERS": ",".join(hz_cluster.members), "HZ_CLUSTER": hz_cluster.cluster_name,
           "OBF_MAP_SUFFIX": suffix}
    worker = WorkerProcess(["--bar-seconds", "2", "--worker-id", worker_id], env, tmp_path_factory.mktemp("worker"))
    p = Pipeline(hz_cluster, suffix, feeder, worker, worker_id, client)
    try:
        wait_for(lambda: (h := p.health()) and h["bars_written"] >= 5 and h["n_present"] == len(SYMBOLS), 60,
                 "worker writing bars with every asset present")
        latest = client.get_map(p.maps["DOLPHIN_OBF_LATEST"]).blocking()
        wait_for(lambda: set(latest.key_set()) == set(SYMBOLS), 15, "every symbol in the latest map")
        yield p
    finally:
        feeder.stop()
        rc = worker.stop()
        client.shutdown()
        assert rc == 0, worker.log_text()[-3000:]


# --- SQL with the running worker --------------------------------------------------------------


def _check_running(name: str, rows: list[dict[str, Any]], p: Pipeline) -> None:
    """Checks that hold however far the worker got: bar records are immutable once written."""
    def same_asset(row: dict[str, Any], sym: str) -> None:
        a = asset_view(p.record(row["bar_idx"]))[sym]
        for col in LATEST_SIGNAL:
            if col in row:
                assert row[col] == a["signal"][col], (name, sym, col)
        for col in LATEST_PLACEMENT:
            if col in row:
                assert row[col] == a["placement"][col], (name, sym, col)

    def descending(key: str) -> None:
        keys = [r[key] for r in rows]
        assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys), name

    if name == "latest-by-imbalance":
        assert sorted(r["symbol"] for r in rows) == sorted(SYMBOLS), "every present asset"
        imb = [r["imbalance"] for r in rows]
        assert imb == sorted(imb)
    elif name == "latest-all":
        assert [r["symbol"] for r in rows] == sorted(SYMBOLS)
        for r in rows:
            same_asset(r, r["symbol"])
            assert r["seq"] == asset_view(p.record(r["bar_idx"]))[r["symbol"]]["seq"]
    elif name in ("latest-thin-books", "latest-strong-imbalance", "latest-stale-input"):
        assert {r["symbol"] for r in rows} <= set(SYMBOLS)
        for r in rows:
            if name == "latest-thin-books":
                assert r["depth_quality"] < 0.5
            elif name == "latest-strong-imbalance":
                assert abs(r["imbalance_ma5"]) > 0.3
            else:
                assert r["age_ms"] > 1000
    elif name in ("bars-recent", "bars-view-recent", "asset-history-btc", "bars-degraded"):
        assert rows or name == "bars-degraded"
        descending("bar_idx")
        for r in rows:
            rec = p.record(r["bar_idx"])
            if "cascade_regime" in r:
                assert r["cascade_regime"] == (rec["macro"] or {}).get("cascade_regime")
                assert r["agreement_pct"] == (rec["market"] or {}).get("agreement_pct")
            if name == "asset-history-btc":
                a = asset_view(rec)["BTCUSDT"]
                assert r["symbol"] == "BTCUSDT"
                assert r["imbalance"] == a["signal"]["imbalance"] and r["age_ms"] == a["age_ms"]
                assert r["depth_quality"] == a["placement"]["depth_quality"]
            if name == "bars-degraded":
                assert rec["degraded"] or rec["producer"]["degraded"]
    elif name == "bar-latest-record":
        assert len(rows) == 1
        rec = p.record(rows[0]["bar_idx"])
        assert _json(rows[0]["record"]) == rec
        assert _json(rows[0]["producer"])["worker_id"] == p.worker_id
    elif name == "bars-by-regime":
        assert sum(r["bars"] for r in rows) >= 5
        assert {r["cascade_regime"] for r in rows} <= {"CALM", "STRESS", "CASCADE", None}
    elif name == "bars-range":
        (r,) = rows
        assert r["bars"] >= 5 and r["last_bar_idx"] - r["first_bar_idx"] + 1 >= r["bars"]
    elif name in ("workers", "workers-view"):
        mine = [r for r in rows if r["worker_id"] == p.worker_id]
        assert len(mine) == 1, rows
        assert mine[0]["state"] == "running" and mine[0]["role"] == "leader"
        assert _json(mine[0]["rejected"]) == {}
        if name == "workers-view":
            assert mine[0]["pid"] == p.worker.pid and mine[0]["stale_assets"] is not None
    else:
        pytest.fail(f"no check for example query {name!r}: add one here and in test_sql_on_known_data")


def test_every_statement_runs_against_a_running_worker(pipeline: Pipeline, hz_client):
    statements = _statements(pipeline.suffix)
    reader = InspectionReader(hz_client)
    applied = apply_statements(reader, statements)
    assert [st.name for st, err in applied if err is None] == \
        ["map-features", "map-health", "map-latest", "view-bars", "view-workers"]
    queries = [st for st in statements if st.kind is StatementKind.QUERY]
    assert len(queries) + len(applied) == len(statements), "only mappings, views and queries in the file"
    for st in queries:
        rows = _rows(reader, st.text)
        _check_running(st.name, rows, pipeline)
    # Re-applying is harmless (CREATE OR REPLACE), as `obf-features sql --apply` relies on.
    assert all(err is None for _, err in apply_statements(reader, statements))


def test_sql_cli_applies_and_runs_examples(pipeline: Pipeline, capsys):
    args = _cluster_args(pipeline.cluster, pipeline.suffix)
    rc = cli.main(["sql", "--apply", "--run", "latest-by-imbalance", "--run", "workers", *args])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("ok      ") == 5
    for sym in SYMBOLS:
        assert sym in out
    rc = cli.main(["sql", "--run", "latest-by-imbalance", "--run", "workers", "--json", *args])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    by_imb = [x["row"] for x in lines if x["query"] == "latest-by-imbalance"]
    assert sorted(r["symbol"] for r in by_imb) == sorted(SYMBOLS)
    assert [r["imbalance"] for r in by_imb] == sorted(r["imbalance"] for r in by_imb)
    workers = [x["row"] for x in lines if x["query"] == "workers"]
    assert [w["worker_id"] for w in workers] == [pipeline.worker_id] and workers[0]["rejected"] == {}
    assert cli.main(["sql", "--run", "no-such-query", *args]) == 2


# --- SQL on known data: exact expectations for every example query ----------------------------


@pytest.fixture
def known_data(hz_client, map_suffix: str) -> dict[str, Any]:
    """Bar records, latest docs and health docs written by the test (no worker), in the shared formats."""
    first = 1_723_161_600
    absent = {3: set(SYMBOLS), 7: {"SOLUSDT"}, 8: {"SOLUSDT", "BTCUSDT"}}
    recs = engine_records(30, list(SYMBOLS), seed=11, start_idx=first, absent=absent)
    records: dict[int, dict[str, Any]] = {}
    for i, rec in enumerate(recs):
        rec = with_producer(rec, "w-a", degraded=i in (7, 8), stale=sorted(absent.get(i, set())))
        if rec["macro"] is not None and i in (10, 11, 20):
            rec["macro"]["cascade_regime"] = "STRESS" if i != 20 else "CASCADE"
        records[rec["bar_idx"]] = rec
    latest: dict[str, dict[str, Any]] = {}
    for idx in sorted(records):
        rec = records[idx]
        for sym, a in asset_view(rec).items():
            latest[sym] = {"symbol": sym, "bar_idx": idx, "bar_ts": rec["bar_ts"], "age_ms": a["age_ms"],
                           "seq": a["seq"], **a["placement"], **a["signal"]}
    latest["ETHUSDT"]["depth_quality"] = 0.31
    latest["SOLUSDT"]["depth_quality"] = 0.12
    latest["SOLUSDT"]["age_ms"] = 2500.0
    latest["BTCUSDT"]["imbalance_ma5"] = -0.62
    latest["1000SHIBUSDT"]["imbalance_ma5"] = 0.45
    latest["1000SHIBUSDT"]["seq"] = None
    now = records[first + 29]["bar_ts"] + 0.5
    health = {"w-a": health_doc("w-a", now, last_bar_idx=first + 29, rejected={"bad_json": 2}),
              "w-b": health_doc("w-b", now, role="standby", state="running", last_bar_idx=None,
                                stale_assets=["SOLUSDT"])}
    m = _maps(map_suffix)
    hz_client.get_map(m["DOLPHIN_OBF_FEATURES"]).blocking().put_all(
        {k: HazelcastJsonValue(json.dumps(v)) for k, v in records.items()})
    hz_client.get_map(m["DOLPHIN_OBF_LATEST"]).blocking().put_all(
        {k: HazelcastJsonValue(json.dumps(v)) for k, v in latest.items()})
    hz_client.get_map(m["DOLPHIN_OBF_HEALTH"]).blocking().put_all(
        {k: HazelcastJsonValue(json.dumps(v)) for k, v in health.items()})
    return {"records": records, "latest": latest, "health": health}


def _bar_row(rec: dict[str, Any]) -> dict[str, Any]:
    market, macro = rec["market"] or {}, rec["macro"] or {}
    return {"bar_idx": rec["bar_idx"], "bar_ts": rec["bar_ts"], "n_present": rec["n_present"],
            "cascade_regime": macro.get("cascade_regime"), "agreement_pct": market.get("agreement_pct"),
            "depth_velocity": macro.get("depth_velocity"), "degraded": rec["degraded"]}


def _expected(name: str, d: dict[str, Any]) -> Callable[[list[dict[str, Any]]], None]:
    records, latest, health = d["records"], d["latest"], d["health"]
    desc = [records[k] for k in sorted(records, reverse=True)]

    def eq(expected: list[dict[str, Any]]) -> Callable[[list[dict[str, Any]]], None]:
        def check(rows: list[dict[str, Any]]) -> None:
            got = [{k: _json(v) if isinstance(v, HazelcastJsonValue) else v for k, v in r.items()} for r in rows]
            assert got == expected, name
        return check

    def pick(doc: dict[str, Any], *cols: str) -> dict[str, Any]:
        return {c: doc[c] for c in cols}

    docs = list(latest.values())
    if name == "latest-by-imbalance":
        return eq([pick(x, "symbol", "imbalance") for x in sorted(docs, key=lambda x: x["imbalance"])])
    if name == "latest-all":
        return eq([dict(x) for x in sorted(docs, key=lambda x: x["symbol"])])
    if name == "latest-thin-books":
        return eq([pick(x, "symbol", "depth_quality", "depth_1pct_usd", "spread_proxy_bps", "withdrawal_velocity")
                   for x in sorted((x for x in docs if x["depth_quality"] < 0.5), key=lambda x: x["depth_quality"])])
    if name == "latest-strong-imbalance":
        hits = sorted((x for x in docs if abs(x["imbalance_ma5"]) > 0.3), key=lambda x: -abs(x["imbalance_ma5"]))
        return eq([pick(x, "symbol", "imbalance", "imbalance_ma5", "imbalance_persistence", "depth_asymmetry")
                   for x in hits])
    if name == "latest-stale-input":
        return eq([pick(x, "symbol", "bar_idx", "age_ms", "seq")
                   for x in sorted((x for x in docs if x["age_ms"] > 1000), key=lambda x: -x["age_ms"])])
    if name == "bars-recent":
        return eq([_bar_row(r) for r in desc[:20]])
    if name == "bar-latest-record":
        r = desc[0]
        return eq([{"bar_idx": r["bar_idx"], "market": r["market"], "macro": r["macro"],
                    "producer": r["producer"], "record": r}])
    if name == "asset-history-btc":
        out = []
        for r in [r for r in desc if "BTCUSDT" in r["symbols"]][:20]:
            a = asset_view(r)["BTCUSDT"]
            out.append({"bar_idx": r["bar_idx"], "imbalance": a["signal"]["imbalance"],
                        "imbalance_ma5": a["signal"]["imbalance_ma5"],
                        "depth_quality": a["placement"]["depth_quality"],
                        "spread_proxy_bps": a["placement"]["spread_proxy_bps"], "age_ms": a["age_ms"],
                        "symbol": "BTCUSDT"})
        return eq(out)
    if name == "bars-by-regime":
        counts = Counter((r["macro"] or {}).get("cascade_regime") for r in records.values())

        def check(rows: list[dict[str, Any]]) -> None:
            assert {r["cascade_regime"]: r["bars"] for r in rows} == dict(counts)
            assert len(rows) == len(counts)
        return check
    if name == "bars-degraded":
        return eq([{"bar_idx": r["bar_idx"], "n_present": r["n_present"], "stale_assets": r["producer"]["stale_assets"]}
                   for r in desc if r["degraded"] or r["producer"]["degraded"]][:50])
    if name == "bars-range":
        return eq([{"bars": len(records), "first_bar_idx": min(records), "last_bar_idx": max(records)}])
    if name == "bars-view-recent":
        def check(rows: list[dict[str, Any]]) -> None:
            want = desc[:20]
            assert [r["bar_idx"] for r in rows] == [r["bar_idx"] for r in want]
            for row, rec in zip(rows, want, strict=True):
                assert row["bar_time"].timestamp() == math.floor(rec["bar_ts"])
                b = _bar_row(rec)
                assert {k: row[k] for k in ("n_present", "cascade_regime", "agreement_pct", "depth_velocity",
                                            "degraded")} == {k: b[k] for k in ("n_present", "cascade_regime",
                                                                                "agreement_pct", "depth_velocity",
                                                                                "degraded")}
                assert row["median_imbalance"] == (rec["market"] or {}).get("median_imbalance")
        return check
    if name == "workers":
        return eq([{"worker_id": w, "state": h["state"], "role": h["role"], "last_bar_idx": h["last_bar_idx"],
                    "bars_written": h["bars_written"], "rejected": h["events"]["rejected"],
                    "event_to_write_ms_p99": h["event_to_write_ms"]["p99"]} for w, h in sorted(health.items())])
    if name == "workers-view":
        return eq([{"worker_id": w, "state": h["state"], "role": h["role"], "host": h["host"], "pid": h["pid"],
                    "last_bar_idx": h["last_bar_idx"], "bars_written": h["bars_written"],
                    "events_accepted": h["events"]["accepted"], "rejected": h["events"]["rejected"],
                    "stale_assets": h["stale_assets"]} for w, h in sorted(health.items())])
    pytest.fail(f"no expectation for example query {name!r}")


def test_sql_on_known_data(known_data, hz_client, map_suffix: str):
    statements = _statements(map_suffix)
    reader = InspectionReader(hz_client)
    apply_statements(reader, statements)
    checked = 0
    for st in statements:
        if st.kind is StatementKind.QUERY:
            _expected(st.name, known_data)(_rows(reader, st.text))
            checked += 1
    assert checked == sum(1 for st in statements if st.kind is StatementKind.QUERY) >= 8
    # The hits the filter queries were built to find.
    thin = _rows(reader, next(st.text for st in statements if st.name == "latest-thin-books"))
    assert [r["symbol"] for r in thin] == ["SOLUSDT", "ETHUSDT"]


# --- status -------------------------------------------------------------------------------------


def _status(args: list[str], capsys) -> tuple[int, dict[str, Any]]:
    rc = cli.main(["status", "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def test_status_ok_with_a_healthy_worker(pipeline: Pipeline, capsys):
    rc, report = _status(_cluster_args(pipeline.cluster, pipeline.suffix), capsys)
    assert rc == 0 and report["verdict"] == "OK", report["reasons"]
    (w,) = [w for w in report["workers"] if w["worker_id"] == pipeline.worker_id]
    assert w["healthy"] and w["state"] == "running" and w["pid"] == pipeline.worker.pid
    assert w["rejected"] == {} and w["events_accepted"] > 0
    assert sorted(a["symbol"] for a in report["assets"]) == sorted(SYMBOLS)
    assert not any(a["stale"] for a in report["assets"])
    assert report["newest_bar"]["bar_idx"] >= w["last_bar_idx"]
    # The human screen exits the same way.
    assert cli.main(["status", *_cluster_args(pipeline.cluster, pipeline.suffix)]) == 0
    assert "OK" in capsys.readouterr().out


def test_status_exit_codes_without_a_healthy_worker(hz_cluster, hz_client, map_suffix, capsys):
    args = _cluster_args(hz_cluster, map_suffix)
    rc, report = _status(args, capsys)
    assert (rc, report["verdict"]) == (2, "CRITICAL")  # nothing there at all

    health = hz_client.get_map("DOLPHIN_OBF_HEALTH" + map_suffix).blocking()
    now = time.time()
    health.put("w-deg", HazelcastJsonValue(json.dumps(health_doc("w-deg", now, state="degraded"))))
    health.put("w-sb", HazelcastJsonValue(json.dumps(health_doc("w-sb", now, role="standby"))))
    rc, report = _status(args, capsys)
    assert (rc, report["verdict"]) == (1, "WARNING")
    assert {w["worker_id"]: w["healthy"] for w in report["workers"]} == {"w-deg": False, "w-sb": False}

    health.put("w-ok", HazelcastJsonValue(json.dumps(health_doc("w-ok", now))))
    rc, report = _status(args, capsys)
    assert (rc, report["verdict"]) == (0, "OK")


def test_status_unreachable_cluster_is_unknown(capsys):
    rc, report = _status(["--members", f"127.0.0.1:{free_port()}", "--cluster", "nobody",
                          "--connect-timeout", "1"], capsys)
    assert (rc, report["verdict"], report["reachable"]) == (3, "UNKNOWN", False)


# --- watch ------------------------------------------------------------------------------------------


def _parse_plain(lines: list[str]) -> tuple[int, dict[str, dict[str, str]]]:
    bar_idx = int(lines[0].split()[1])
    assets = {}
    for line in lines[2:]:
        sym, *cells = line.split()
        assets[sym] = dict(c.split("=", 1) for c in cells)
    return bar_idx, assets


def test_watch_once_prints_the_newest_bar(pipeline: Pipeline, capsys):
    before = pipeline.health()["last_bar_idx"]
    rc = cli.main(["watch", "--once", *_cluster_args(pipeline.cluster, pipeline.suffix)])
    out = capsys.readouterr().out
    assert rc == 0, out
    bar_idx, assets = _parse_plain(out.strip().splitlines())
    assert bar_idx >= before
    rec = pipeline.record(bar_idx)
    view = asset_view(rec)
    assert sorted(assets) == sorted(view) == sorted(SYMBOLS)
    for sym, cells in assets.items():
        assert cells["imb"] == f"{view[sym]['signal']['imbalance']:+.3f}"
        assert cells["d_qual"] == f"{view[sym]['placement']['depth_quality']:.2f}"
    assert f"worker {pipeline.worker_id}" in out


def test_watch_once_waits_for_the_first_bar_through_the_listener(hz_cluster, hz_client, map_suffix, capsys,
                                                                 monkeypatch):
    rec = with_producer(engine_records(3, ["BTCUSDT", "ETHUSDT"], seed=5)[-1], "w-listen")
    seeded = threading.Event()
    original = InspectionReader.newest_bar

    def newest_bar(self, features_map):
        try:
            return original(self, features_map)
        finally:
            seeded.set()  # the seed read is done: from here on only the listener can deliver the bar

    monkeypatch.setattr(InspectionReader, "newest_bar", newest_bar)
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(
        rc=cli.main(["watch", "--once", "--timeout", "30", *_cluster_args(hz_cluster, map_suffix)])))
    t.start()
    assert seeded.wait(30), "watch never read its seed"
    hz_client.get_map("DOLPHIN_OBF_FEATURES" + map_suffix).blocking().put(
        rec["bar_idx"], HazelcastJsonValue(json.dumps(rec)))
    t.join(35)
    assert not t.is_alive(), "watch --once did not return"
    out = capsys.readouterr().out
    assert result["rc"] == 0, out
    bar_idx, assets = _parse_plain(out.strip().splitlines())
    assert bar_idx == rec["bar_idx"] and sorted(assets) == ["BTCUSDT", "ETHUSDT"]


def test_watch_once_with_no_bar_exits_1(hz_cluster, map_suffix, capsys):
    assert cli.main(["watch", "--once", "--timeout", "1", *_cluster_args(hz_cluster, map_suffix)]) == 1


def test_watch_live_prints_each_new_bar_and_stops_on_ctrl_c(pipeline: Pipeline):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBF_", "HZ_"))}
    proc = subprocess.Popen([sys.executable, "-m", "obf_features_worker.cli", "watch", "--plain",
                             *_cluster_args(pipeline.cluster, pipeline.suffix)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT, env=env)
    bars: list[int] = []
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("bar "):
                bars.append(int(line.split()[1]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(bars) >= 4, 30, "four frames")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(5)
    # One frame per new bar, in bar order (a burst may merge into its newest bar, never go back).
    assert bars == sorted(bars) and len(set(bars)) == len(bars), bars


# --- plot from the map ----------------------------------------------------------------------------


def test_plot_last_bars_from_the_map(pipeline: Pipeline, tmp_path: Path, capsys):
    out = tmp_path / "map.png"
    rc = cli.main(["plot", "--last", "5", "--output", str(out), *_cluster_args(pipeline.cluster, pipeline.suffix)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "bars=5 " in text and f"assets={','.join(sorted(SYMBOLS))} " in text, text  # all present: by name


def test_plot_empty_map_exits_1(hz_cluster, map_suffix, tmp_path: Path, capsys):
    rc = cli.main(["plot", "--last", "5", "--output", str(tmp_path / "x.png"), *_cluster_args(hz_cluster, map_suffix)])
    assert rc == 1 and not (tmp_path / "x.png").exists()
