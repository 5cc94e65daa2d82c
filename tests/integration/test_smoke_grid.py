"""Round trip against a real member: JSON values in, filtered entry events out, SQL over a map."""

from __future__ import annotations

import threading

from hazelcast import predicate
from hazelcast.core import HazelcastJsonValue

from obf_contract.keys import ASSET_KEY_FILTER, is_asset_key_shape
from tests.cluster import HzCluster


def test_member_is_real_and_reports_a_version(hz_cluster: HzCluster, hz_client) -> None:
    assert hz_cluster.version and hz_cluster.version[0] == "5"
    assert hz_client.lifecycle_service.is_running()


def test_filtered_listener_receives_asset_keys_only(hz_client, map_suffix: str) -> None:
    """The worker's member-side filter (a Java regex, full match) passes exactly the keys shaped
    asset_..._ob, malformed symbols included (the worker counts those as bad_symbol), and agrees
    with the Python check of the same shape on every key here."""
    m = hz_client.get_map("DOLPHIN_FEATURES" + map_suffix).blocking()
    puts = {
        "latest_eigen_scan": '{"scan_number": 1}',
        "assetXBTCUSDTXob": '{"not": "an asset key"}',  # LIKE 'asset_%_ob' would let this through
        "ASSET_BTCUSDT_OB": '{"upper": "case"}',
        "asset_BTCUSDT_ob\n": '{"trailing": "newline"}',
        "xasset_BTCUSDT_ob": '{"leading": "x"}',
        "asset_btcusdt_ob": '{"lower": "case"}',
        "asset_BTC\nUSD_ob": '{"inner": "newline"}',
        "asset_ob": '{"empty": "symbol"}',
        "asset_BTCUSDT_ob": '{"as": "string"}',
        "asset_BTCUSD_PERP_ob": '{"under": "score"}',
        "asset_1000PEPE-USDT_ob": '{"da": "sh"}',
        "asset_ETHUSDT_ob": HazelcastJsonValue('{"as": "json"}'),
    }
    shaped = {k for k in puts if is_asset_key_shape(k)}
    assert shaped == {"asset_btcusdt_ob", "asset_BTC\nUSD_ob", "asset_ob", "asset_BTCUSDT_ob",
                      "asset_BTCUSD_PERP_ob", "asset_1000PEPE-USDT_ob", "asset_ETHUSDT_ob"}
    filtered: dict[str, str] = {}
    unfiltered: set[str] = set()
    lock = threading.Condition()

    def text(value) -> str:
        return value.to_string() if isinstance(value, HazelcastJsonValue) else value

    def on_filtered(event) -> None:
        with lock:
            filtered[event.key] = text(event.value)
            lock.notify_all()

    def on_any(event) -> None:
        with lock:
            unfiltered.add(event.key)
            lock.notify_all()

    reg_f = m.add_entry_listener(
        include_value=True, predicate=predicate.regex("__key", ASSET_KEY_FILTER),
        added_func=on_filtered, updated_func=on_filtered,
    )
    # Witness: once an unfiltered listener has seen every put, the filtered one
    # has been offered every event too (same member, same partition threads).
    reg_a = m.add_entry_listener(include_value=False, added_func=on_any, updated_func=on_any)
    try:
        for key, value in puts.items():
            m.put(key, value)
        with lock:
            assert lock.wait_for(lambda: unfiltered == set(puts) and len(filtered) >= len(shaped), timeout=10), (
                f"events missing: unfiltered={unfiltered} filtered={filtered}"
            )
    finally:
        m.remove_entry_listener(reg_f)
        m.remove_entry_listener(reg_a)
    assert set(filtered) == shaped
    assert filtered["asset_BTCUSDT_ob"] == '{"as": "string"}' and filtered["asset_ETHUSDT_ob"] == '{"as": "json"}'



def test_sql_over_a_mapped_map(hz_client, map_suffix: str) -> None:
    name = "DOLPHIN_OBF_FEATURES" + map_suffix
    m = hz_client.get_map(name).blocking()
    for bar_idx, imb in ((7, 0.25), (8, -0.5)):
        m.put(bar_idx, HazelcastJsonValue(f'{{"bar_idx": {bar_idx}, "imbalance": {imb}}}'))
    hz_client.sql.execute(
        f'CREATE OR REPLACE MAPPING "{name}" (__key BIGINT, this JSON) '
        "TYPE IMap OPTIONS ('keyFormat'='bigint', 'valueFormat'='json')"
    ).result()
    rows = hz_client.sql.execute(
        f"SELECT __key, JSON_VALUE(this, '$.imbalance' RETURNING DOUBLE) AS imb FROM \"{name}\" ORDER BY __key"  # noqa: S608 - test map name, not user input
    ).result()
    assert [(r.get_object("__key"), r.get_object("imb")) for r in rows] == [(7, 0.25), (8, -0.5)]
