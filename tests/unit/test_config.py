"""WorkerConfig: flags > env vars > defaults, every option documented, bad values exit 2 early."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from obf_features_worker import cli
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.service import config as C


def load(argv: list[str] | None = None, env: dict[str, str] | None = None) -> C.WorkerConfig:
    return C.load_config(argv or [], env or {})[0]


def test_defaults_are_the_documented_ones():
    cfg = load()
    assert cfg.cluster_name == "dev" and cfg.members == ("127.0.0.1:5701",)
    assert (cfg.input_map, cfg.features_map, cfg.health_map, cfg.latest_map, cfg.state_map) == (
        "DOLPHIN_FEATURES", "DOLPHIN_OBF_FEATURES", "DOLPHIN_OBF_HEALTH", "DOLPHIN_OBF_LATEST", "DOLPHIN_OBF_STATE")
    assert cfg.clock == "interval" and cfg.bar_seconds == 5.0 and cfg.max_age_s == 10.0
    assert cfg.scan_map == "DOLPHIN_FEATURES" and cfg.scan_key == "latest_eigen_scan" and cfg.scan_field is None
    assert cfg.retain_bars == 500 and cfg.assets is None and cfg.write_latest is True
    assert cfg.connect_timeout_s is None  # keep trying forever
    assert cfg.health_ttl_s == 15.0
    assert cfg.params == FeatureParams()
    assert re.fullmatch(r".+-" + str(os.getpid()), cfg.worker_id)


def test_flag_beats_env_beats_default():
    env = {"OBF_BAR_SECONDS": "2", "HZ_MEMBERS": "a:1, b:2", "HZ_CLUSTER": "prod", "OBF_RETAIN_BARS": "7"}
    cfg = load(["--bar-seconds", "3", "--cluster", "flagged"], env)
    assert cfg.bar_seconds == 3.0  # flag
    assert cfg.cluster_name == "flagged"  # flag
    assert cfg.members == ("a:1", "b:2")  # env
    assert cfg.retain_bars == 7  # env
    assert cfg.max_age_s == 6.0  # default: 2 x the (flag) bar seconds
    assert cfg.health_ttl_s == 15.0  # max(3 * 3, 15)
    assert load(["--bar-seconds", "10"]).health_ttl_s == 30.0


def test_engine_parameters_from_flags_and_env():
    cfg = load(["--ema-alpha", "0.2"], {"OBF_IMBALANCE_LOOKBACK": "20", "OBF_MA_WINDOW": "4"})
    assert cfg.params == FeatureParams(ema_alpha=0.2, imbalance_lookback=20, ma_window=4)


def test_map_suffix_goes_on_every_map_including_the_scan_map():
    cfg = load(["--map-suffix", "_T1", "--clock", "scan"])
    assert cfg.input_map == "DOLPHIN_FEATURES_T1" and cfg.features_map == "DOLPHIN_OBF_FEATURES_T1"
    assert cfg.health_map.endswith("_T1") and cfg.latest_map.endswith("_T1") and cfg.state_map.endswith("_T1")
    assert cfg.scan_map == "DOLPHIN_FEATURES_T1"
    assert load(["--scan-map", "SCANS"], {"OBF_MAP_SUFFIX": "_X"}).scan_map == "SCANS_X"
    assert load(["--input-map", "IN"]).scan_map == "IN"  # the scan map defaults to the input map


def test_assets_list_and_all():
    assert load(["--assets", "BTCUSDT, ETHUSDT"]).assets == ("BTCUSDT", "ETHUSDT")
    assert load([], {"OBF_ASSETS": ""}).assets is None
    assert load(["--assets", "all"]).assets is None
    # the one symbol grammar: exchange spellings with '_' and '-' (COIN-M, delivery, other venues)
    assert load(["--assets", "BTCUSD_PERP,ETHUSD_250328,1000PEPE-USDT"]).assets == (
        "BTCUSD_PERP", "ETHUSD_250328", "1000PEPE-USDT")


@pytest.mark.parametrize("argv, env, names", [
    (["--bar-seconds", "0"], {}, "--bar-seconds / OBF_BAR_SECONDS"),
    (["--bar-seconds", "nan"], {}, "--bar-seconds / OBF_BAR_SECONDS"),
    ([], {"OBF_BAR_SECONDS": "fast"}, "OBF_BAR_SECONDS"),
    (["--retain-bars", "0"], {}, "--retain-bars / OBF_RETAIN_BARS"),
    (["--retain-bars", "1.5"], {}, "--retain-bars"),
    (["--clock", "hourly"], {}, "--clock"),
    ([], {"HZ_MEMBERS": "host:99999"}, "--members / HZ_MEMBERS"),
    ([], {"HZ_MEMBERS": " , "}, "--members / HZ_MEMBERS"),
    (["--members", "bad host:5701"], {}, "--members / HZ_MEMBERS"),
    (["--assets", "btcusdt"], {}, "--assets / OBF_ASSETS"),
    (["--assets", "BTCUSD_"], {}, "--assets / OBF_ASSETS"),
    (["--assets", "BTCUSDT,BTCUSDT"], {}, "--assets / OBF_ASSETS"),
    (["--max-age-s", "-1"], {}, "--max-age-s / OBF_MAX_AGE_S"),
    (["--features-map", "has space"], {}, "--features-map / OBF_FEATURES_MAP"),
    (["--worker-id", "a b"], {}, "--worker-id / OBF_WORKER_ID"),
    (["--log-level", "LOUD"], {}, "--log-level / OBF_LOG_LEVEL"),
    (["--log-format", "xml"], {}, "--log-format"),
    (["--write-latest", "maybe"], {}, "--write-latest"),
    (["--connect-timeout-s", "0"], {}, "--connect-timeout-s / OBF_CONNECT_TIMEOUT_S"),
    (["--scan-field", "a b"], {}, "--scan-field / OBF_SCAN_FIELD"),
    (["--ma-window", "50"], {}, "--ma-window / OBF_MA_WINDOW"),
    ([], {"OBF_EMA_ALPHA": "2"}, "--ema-alpha / OBF_EMA_ALPHA"),
])
def test_bad_values_name_the_flag_and_the_variable(argv, env, names):
    with pytest.raises(C.ConfigError) as exc:
        load(argv, env)
    assert names in str(exc.value)


def test_every_option_is_in_help_with_its_env_var(capsys):
    with pytest.raises(SystemExit) as exc:
        C.build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    for opt in C.all_options():
        assert opt.flag in text and f"[env {opt.env}]" in text, opt.flag
        if opt.name in ("members", "cluster_name"):
            assert opt.env == {"members": "HZ_MEMBERS", "cluster_name": "HZ_CLUSTER"}[opt.name]
        else:  # OBF_<OPTION_NAME_UPPER>, the option name being the flag's
            assert opt.env == "OBF_" + opt.flag[2:].replace("-", "_").upper()


def test_main_exits_2_before_connecting(monkeypatch, capsys):
    import hazelcast.client

    def no_client(*_a, **_k):
        raise AssertionError("a client was created for a bad configuration")

    monkeypatch.setattr(hazelcast.client, "HazelcastClient", no_client)
    monkeypatch.setenv("OBF_RETAIN_BARS", "-5")
    assert cli.worker_main([]) == 2
    err = capsys.readouterr().err
    assert "OBF_RETAIN_BARS" in err and "-5" in err


def test_check_config_prints_the_resolved_config(monkeypatch, capsys):
    for var in [v for v in os.environ if v.startswith(("OBF_", "HZ_"))]:
        monkeypatch.delenv(var)
    assert cli.worker_main(["--check-config", "--bar-seconds", "2", "--assets", "BTCUSDT"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bar_seconds"] == 2.0 and doc["assets"] == ["BTCUSDT"] and doc["max_age_s"] == 4.0
    assert doc["params"]["ma_window"] == 5 and doc["health_ttl_s"] == 15.0


def test_config_is_frozen_and_validates_direct_construction():
    cfg = C.WorkerConfig(worker_id="w1")
    with pytest.raises(AttributeError):
        cfg.bar_seconds = 1.0  # type: ignore[misc]
    with pytest.raises(C.ConfigError):
        C.WorkerConfig(worker_id="w1", bar_seconds=-1.0)


def test_operations_doc_names_every_flag_and_variable():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for opt in C.all_options():
        assert opt.flag in doc, opt.flag
        if not opt.name.startswith("params."):
            assert opt.env in doc, opt.env
