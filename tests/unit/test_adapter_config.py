"""AdapterConfig: defaults, environment, fail-fast validation; get_market/get_macro argument forms."""

from __future__ import annotations

import pytest
from hazelcast.config import IntType

from engine_adapter.adapter import AdapterConfig, _market_key, client_settings


def test_defaults() -> None:
    c = AdapterConfig()
    assert (c.cluster_name, c.members, c.map_name) == ("dev", ("127.0.0.1:5701",), "DOLPHIN_OBF_FEATURES")
    assert (c.cache_bars, c.seed_bars, c.stale_after_bars, c.max_wait_ms) == (500, 500, 2, 50.0)
    assert (c.connect_timeout_s, c.reconnect_backoff_max_s) == (None, 5.0)


def test_own_client_settings_reconnect_forever_with_long_keys() -> None:
    s = client_settings(AdapterConfig(cluster_name="c", members=("h:1",), reconnect_backoff_max_s=2))
    assert s["cluster_connect_timeout"] == -1 and s["retry_max_backoff"] == 2.0
    assert s["default_int_type"] == IntType.LONG
    assert (s["cluster_name"], s["cluster_members"]) == ("c", ["h:1"])
    assert client_settings(AdapterConfig(connect_timeout_s=30))["cluster_connect_timeout"] == 30.0


def test_from_env_and_overrides() -> None:
    env = {"HZ_CLUSTER": "prod", "HZ_MEMBERS": "10.0.0.1:5701, 10.0.0.2:5702,", "OBF_FEATURES_MAP": "F_X",
           "OBF_ADAPTER_CACHE_BARS": "100", "OBF_ADAPTER_SEED_BARS": "20", "OBF_ADAPTER_STALE_AFTER_BARS": "0",
           "OBF_ADAPTER_MAX_WAIT_MS": "0"}
    c = AdapterConfig.from_env(env)
    assert c.cluster_name == "prod" and c.members == ("10.0.0.1:5701", "10.0.0.2:5702")
    assert (c.map_name, c.cache_bars, c.seed_bars, c.stale_after_bars, c.max_wait_ms) == ("F_X", 100, 20, 0, 0.0)
    assert AdapterConfig.from_env(env, cache_bars=30).cache_bars == 30
    assert AdapterConfig.from_env({}) == AdapterConfig()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"cluster_name": ""}, "cluster_name"),
    ({"members": ()}, "members"),
    ({"members": ("host:0",)}, "members"),
    ({"members": ("host:70000",)}, "members"),
    ({"members": ("host:port",)}, "members"),
    ({"map_name": "bad name"}, "map_name"),
    ({"cache_bars": 0}, "cache_bars"),
    ({"cache_bars": 10.0}, "cache_bars"),
    ({"stale_after_bars": -1}, "stale_after_bars"),
    ({"seed_bars": 0}, "seed_bars"),
    ({"cache_bars": 10, "seed_bars": 11}, "seed_bars"),
    ({"max_wait_ms": -1}, "max_wait_ms"),
    ({"max_wait_ms": float("nan")}, "max_wait_ms"),
    ({"connect_timeout_s": "5"}, "connect_timeout_s"),
    ({"connect_timeout_s": 0}, "connect_timeout_s"),
    ({"reconnect_backoff_max_s": 0}, "reconnect_backoff_max_s"),
])
def test_bad_values_fail_fast_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AdapterConfig(**kwargs)


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="OBF_ADAPTER_CACHE_BARS"):
        AdapterConfig.from_env({"OBF_ADAPTER_CACHE_BARS": "lots"})


def test_members_accept_host_only_and_ipv6() -> None:
    assert AdapterConfig(members=("hz-0", "[::1]:5701")).members == ("hz-0", "[::1]:5701")


@pytest.mark.parametrize(("args", "key"), [
    ((), None), ((12,), 12), (("BTCUSDT",), None), (("BTCUSDT", 12), 12), ((None, 12), 12),
    ((1.7e9,), 1.7e9),
])
def test_market_and_macro_accept_an_optional_leading_asset(args: tuple, key: object) -> None:
    assert _market_key(*args) == key
