"""The symbol grammar end to end against a real member: exchange spellings with ``_`` and ``-``
(COIN-M ``BTCUSD_PERP``, delivery ``ETHUSD_250328``, ``1000PEPE-USDT``) flow through the worker,
the latest map, the adapter and SQL; a malformed ``asset_..._ob`` key reaches the worker (the
member-side filter passes it) and is counted as ``bad_symbol`` in health, metrics and status and
logged once per key; keys of other shapes stay on the member.

Synchronisation is by polling the grid with deadlines (``wait_for``), never a bare sleep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hazelcast import predicate

from engine_adapter import AdapterConfig, HazelcastOBEngine
from obf_contract.record import asset_view
from obf_features_worker import cli
from obf_features_worker.dev.member import free_port
from obf_features_worker.engine.feature_engine import FeatureEngine
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.inspection.sql import apply_statements, load_statements, map_renames
from obf_features_worker.service.grid import InspectionReader, asset_key_regex
from tests.cluster import HzCluster
from tests.integration.feeder import TestFeeder, WorkerProcess, json_value, wait_for
from tests.integration.prometheus import scrape

SYMBOLS = ("BTCUSD_PERP", "ETHUSD_250328", "1000PEPE-USDT", "BTCUSDT")
# Malformed asset keys: each reaches the worker once and is counted as bad_symbol.
BAD_BEFORE_START = "asset_btcusdt_ob"  # seen by the worker's initial read
BAD_AFTER_START = ("asset_BTC USD_ob", "asset__PERP_ob")  # seen as entry events
# Other key shapes: filtered on the member, counted nowhere.
FOREIGN = {"latest_eigen_scan": '{"scan_number": 1}', "assetXBTCUSDTXob": "{}", "status": "x",
           "ASSET_BTCUSDT_OB": "{}"}



def test_underscore_symbols_flow_end_to_end_and_bad_symbols_are_counted(
        hz_cluster: HzCluster, hz_client, map_suffix: str, tmp_path: Path, capsys) -> None:
    maps = {k: k + map_suffix for k in ("DOLPHIN_FEATURES", "DOLPHIN_OBF_FEATURES", "DOLPHIN_OBF_HEALTH",
                                        "DOLPHIN_OBF_LATEST")}
    inp = hz_client.get_map(maps["DOLPHIN_FEATURES"]).blocking()
    health_map = hz_client.get_map(maps["DOLPHIN_OBF_HEALTH"]).blocking()
    feeder = TestFeeder(hz_cluster.client(), maps["DOLPHIN_FEATURES"], SYMBOLS).start()
    for key, value in {**FOREIGN, BAD_BEFORE_START: feeder.payload("BTCUSDT")[1]}.items():
        inp.put(key, value)
    worker_id = "t-symbols" + map_suffix
    port = free_port()
    env = {"HZ_MEMBERS": ",".join(hz_cluster.members), "HZ_CLUSTER": hz_cluster.cluster_name,
           "OBF_MAP_SUFFIX": map_suffix}

    def health() -> dict[str, Any]:
        v = health_map.get(worker_id)
        return {} if v is None else json_value(v)

    try:
        with WorkerProcess(["--bar-seconds", "2", "--worker-id", worker_id, "--metrics-port", str(port)],
                           env, tmp_path) as w:
            wait_for(lambda: health().get("bars_written", 0) >= 2, 30, "first bars")
            for key in BAD_AFTER_START:
                inp.put(key, feeder.payload("BTCUSDT")[1])
            expected = {"bad_symbol": 1 + len(BAD_AFTER_START)}
            wait_for(lambda: health()["events"]["rejected"] == expected, 15, "bad_symbol counted in health")
            wait_for(lambda: health()["n_present"] == len(SYMBOLS), 15, "every symbol present")
            h0 = health()["bars_written"]
            wait_for(lambda: health()["bars_written"] >= h0 + 2, 15, "bars after the bad keys")
            metrics = scrape(port)
            assert metrics['obf_events_rejected_total{reason="bad_symbol"}'] == expected["bad_symbol"]

            rc = cli.main(["status", "--json", "--members", ",".join(hz_cluster.members), "--cluster",
                           hz_cluster.cluster_name, "--map-suffix", map_suffix])
            report = json.loads(capsys.readouterr().out)
            (ws,) = [x for x in report["workers"] if x["worker_id"] == worker_id]
            assert ws["rejected"] == expected, report
            assert {a["symbol"] for a in report["assets"]} == set(SYMBOLS)
            assert rc == 0 and report["verdict"] == "OK", report["reasons"]  # a reject is no ill health
            assert cli.main(["status", "--members", ",".join(hz_cluster.members), "--cluster",
                             hz_cluster.cluster_name, "--map-suffix", map_suffix]) == 0
            assert f"bad_symbol={expected['bad_symbol']}" in capsys.readouterr().out

            # Through the adapter: the trader asks for underscore/dash symbols by their exchange spelling.
            cfg = AdapterConfig(cluster_name=hz_cluster.cluster_name, members=tuple(hz_cluster.members),
                                map_name=maps["DOLPHIN_OBF_FEATURES"])
            with HazelcastOBEngine(cfg, client=hz_client) as eng:
                idx = health()["last_bar_idx"]
                assert eng.wait_for_bar(idx, 10.0)
                rec = json_value(hz_client.get_map(maps["DOLPHIN_OBF_FEATURES"]).blocking().get(idx))
                assert set(rec["symbols"]) == set(SYMBOLS)
                res = eng.step_live(list(SYMBOLS), idx)
                assert (res.kind, res.bar_idx) == ("exact", idx)
                for sym in SYMBOLS:
                    assert eng.get_placement(sym, idx).depth_1pct_usd == asset_view(rec)[sym]["placement"][
                        "depth_1pct_usd"]
                    assert eng.get_signal(sym, idx).imbalance == asset_view(rec)[sym]["signal"]["imbalance"]

            assert w.stop() == 0, w.log_text()[-3000:]
        log = w.log_text()
    finally:
        feeder.stop()

    h = health()
    ev = h["events"]
    assert ev["rejected"] == expected and ev["ignored"] == 0 and ev["listener_errors"] == 0
    assert ev["received"] == ev["accepted"] + ev["read_echoes"] + sum(ev["rejected"].values())
    # Logged once per key, each named.
    for key in (BAD_BEFORE_START, *BAD_AFTER_START):
        assert log.count(f"reason=bad_symbol key={key!r}") == 1, log[-3000:]
    for key in FOREIGN:
        assert repr(key) not in log and f"key={key} " not in log

    # Every record: the engine's output for the snapshots it says it used.
    records = {k: json_value(v) for k, v in hz_client.get_map(maps["DOLPHIN_OBF_FEATURES"]).blocking().entry_set()}
    engine = FeatureEngine(FeatureParams())
    for bar_idx in sorted(records):
        rec = dict(records[bar_idx])
        rec.pop("producer")
        snaps = {sym: feeder.snapshot(sym, a["seq"]) for sym, a in asset_view(rec).items()}
        assert rec == engine.step(bar_idx, rec["bar_ts"], snaps), bar_idx
    last = records[max(records)]
    assert set(last["symbols"]) == set(SYMBOLS)

    # The latest map (key = symbol) and SQL: the mapping, a filter on an underscore symbol, and the
    # columns of the bar record read at a symbol's position.
    latest = hz_client.get_map(maps["DOLPHIN_OBF_LATEST"]).blocking()
    assert set(latest.key_set()) == set(SYMBOLS)
    reader = InspectionReader(hz_client)
    apply_statements(reader, load_statements(rename=map_renames(
        maps["DOLPHIN_OBF_FEATURES"], maps["DOLPHIN_OBF_HEALTH"], maps["DOLPHIN_OBF_LATEST"],
        view_suffix=map_suffix)))
    latest_sql = f"SELECT symbol, bar_idx, imbalance FROM {maps['DOLPHIN_OBF_LATEST']} WHERE symbol = ?"  # noqa: S608 - test map name
    names, rows = reader.sql(latest_sql, "BTCUSD_PERP", timeout_s=60)
    (row,) = [dict(zip(names, r, strict=True)) for r in rows]
    doc = json_value(latest.get("BTCUSD_PERP"))
    assert (row["symbol"], row["bar_idx"], row["imbalance"]) == ("BTCUSD_PERP", doc["bar_idx"], doc["imbalance"])
    # The shipped one-asset history query (a symbol's position in the columnar record) with
    # '_', '-' and leading-digit symbols.
    (history,) = [st for st in load_statements(rename=map_renames(
        maps["DOLPHIN_OBF_FEATURES"], maps["DOLPHIN_OBF_HEALTH"], maps["DOLPHIN_OBF_LATEST"],
        view_suffix=map_suffix)) if st.name == "asset-history-btc"]
    for sym in ("BTCUSD_PERP", "1000PEPE-USDT", "ETHUSD_250328"):
        names, rows = reader.sql(history.text.replace('"BTCUSDT"', f'"{sym}"'), timeout_s=60)
        got = [dict(zip(names, r, strict=True)) for r in rows]
        want = [(k, asset_view(records[k])[sym]) for k in sorted(records, reverse=True)
                if sym in records[k]["symbols"]][:20]
        assert [(r["bar_idx"], r["symbol"], r["imbalance"], r["depth_quality"]) for r in got] == \
            [(k, sym, a["signal"]["imbalance"], a["placement"]["depth_quality"]) for k, a in want], sym


def test_an_explicit_asset_list_filters_exactly_its_keys_on_the_member(hz_client, map_suffix: str) -> None:
    """``--assets`` with '_' and '-' symbols: the member passes exactly those keys ('_' and '-' are
    literal in the regex, not wildcards), the same filter the worker's listener and reads use."""
    m = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    keys = ["asset_BTCUSD_PERP_ob", "asset_1000PEPE-USDT_ob", "asset_BTCUSDXPERP_ob", "asset_ETHUSD_PERP_ob",
            "asset_1000PEPEXUSDT_ob", "asset_BTCUSD_PERP_obX", "xasset_BTCUSD_PERP_ob"]
    m.put_all({k: "{}" for k in keys})
    regex = asset_key_regex(["BTCUSD_PERP", "1000PEPE-USDT"])
    assert set(m.key_set(predicate.regex("__key", regex))) == {"asset_BTCUSD_PERP_ob", "asset_1000PEPE-USDT_ob"}
    assert set(m.key_set(predicate.regex("__key", asset_key_regex(None)))) == {
        "asset_BTCUSD_PERP_ob", "asset_1000PEPE-USDT_ob", "asset_BTCUSDXPERP_ob", "asset_ETHUSD_PERP_ob",
        "asset_1000PEPEXUSDT_ob"}
