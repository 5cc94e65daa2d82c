"""Every Hazelcast client the project builds refuses pickled values and takes the TLS/auth
settings: the worker's Grid, the feeder's Publisher, the inspection tools and the adapter (own
client or the trader's). Also: the worker's re-read survives values the client cannot
deserialise, and the worker configuration reads and redacts the TLS/auth settings."""

from __future__ import annotations

import threading
from typing import Any

import hazelcast.client
import pytest
from hazelcast.config import Config
from hazelcast.errors import HazelcastSerializationError
from hazelcast.future import Future
from hazelcast.serialization.service import SerializationServiceV1

from obf_contract.pickle_guard import is_guarded
from obf_features_worker.inspection import cluster_args
from obf_features_worker.service import grid
from obf_features_worker.service.config import ConfigError, WorkerConfig, build_parser, config_from_args
from obf_features_worker.service.grid import Grid, Publisher, UnreadableValue

AUTH_ENV = {"HZ_USERNAME": "trader", "HZ_PASSWORD": "s3cret", "HZ_SSL_ENABLED": "true"}


class FakeClient:
    """Stands in for HazelcastClient: a real serialization service, recorded settings."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self._serialization_service = SerializationServiceV1(Config())
        self.maps: dict[str, Any] = {}

    def get_map(self, name: str) -> Any:
        if name not in self.maps:
            raise LookupError(f"no map {name} in this fake")
        return self.maps[name]

    def shutdown(self) -> None:
        pass


def test_worker_grid_client_is_guarded_and_gets_the_tls_settings() -> None:
    made: list[FakeClient] = []

    def factory(**settings: Any) -> FakeClient:
        made.append(FakeClient(**settings))
        return made[-1]

    cfg = WorkerConfig(worker_id="w", tls_auth=(("creds_password", "s3cret"), ("creds_username", "u"),
                                                ("ssl_enabled", True)))
    stop = threading.Event()
    stop.set()  # build the client, then give up waiting for the connection
    assert Grid(cfg, client_factory=factory).connect(stop) is False
    assert len(made) == 2  # the bar path's client and the events' client
    for client in made:
        assert is_guarded(client)
        assert (client.settings["ssl_enabled"], client.settings["creds_username"],
                client.settings["creds_password"]) == (True, "u", "s3cret")


def test_feeder_publisher_takes_tls_settings_from_the_environment(monkeypatch) -> None:
    for k, v in AUTH_ENV.items():
        monkeypatch.setenv(k, v)
    made: list[FakeClient] = []
    p = Publisher("c", ["h:1"], "m", client_factory=lambda **s: made.append(FakeClient(**s)) or made[-1])
    stop = threading.Event()
    stop.set()
    p.connect(stop)
    assert is_guarded(made[0])
    assert made[0].settings["creds_username"] == "trader" and made[0].settings["ssl_enabled"] is True


def test_inspection_client_is_guarded_and_gets_the_tls_settings(monkeypatch) -> None:
    made: list[FakeClient] = []
    monkeypatch.setattr(hazelcast.client, "HazelcastClient",
                        lambda **s: made.append(FakeClient(**s)) or made[-1])
    for k, v in AUTH_ENV.items():
        monkeypatch.setenv(k, v)
    parser = __import__("argparse").ArgumentParser()
    cluster_args.add_cluster_options(parser)
    target = cluster_args.target_from_args(parser.parse_args(["--members", "h:1"]))
    client = grid.connect(target)
    assert client is made[0] and is_guarded(client)
    assert client.settings["creds_password"] == "s3cret" and client.settings["ssl_enabled"] is True  # noqa: S105 - test credential
    monkeypatch.setenv("HZ_SSL_ENABLED", "maybe")
    with pytest.raises(ValueError, match="HZ_SSL_ENABLED"):
        cluster_args.target_from_args(parser.parse_args([]))


def test_adapter_guards_the_traders_client_before_reading() -> None:
    from engine_adapter.adapter import AdapterConfig, HazelcastOBEngine

    trader_client = FakeClient()
    with pytest.raises(LookupError):  # the reader's first step: the guard was installed before it
        HazelcastOBEngine(AdapterConfig(), client=trader_client)  # type: ignore[arg-type]
    assert is_guarded(trader_client)


def test_adapter_own_client_gets_the_tls_settings(monkeypatch) -> None:
    import engine_adapter.adapter as adapter_mod

    made: list[FakeClient] = []
    monkeypatch.setattr(hazelcast.client, "HazelcastClient",
                        lambda **s: made.append(FakeClient(**s)) or made[-1])
    for k, v in AUTH_ENV.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(LookupError):
        adapter_mod.HazelcastOBEngine(adapter_mod.AdapterConfig())
    assert is_guarded(made[0]) and made[0].settings["creds_username"] == "trader"


class FakeInputMap:
    """get_all fails to deserialise (one foreign value); get answers per key."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    @staticmethod
    def _done(result: Any = None, exc: Exception | None = None) -> Future:
        f: Future = Future()
        if exc is not None:
            f.set_exception(exc)
        else:
            f.set_result(result)
        return f

    def get_all(self, keys: list[str]) -> Future:
        return self._done(exc=HazelcastSerializationError("There is no suitable de-serializer for type 42"))

    def get(self, key: str) -> Future:
        v = self.values.get(key)
        if isinstance(v, Exception):
            return self._done(exc=v)
        return self._done(v)


def test_reread_returns_a_marker_for_an_undeserialisable_value() -> None:
    cfg = WorkerConfig(worker_id="w")
    grid = Grid(cfg, client_factory=FakeClient)
    client = FakeClient()
    client.maps[cfg.input_map] = FakeInputMap({
        "asset_AAAUSDT_ob": '{"x": 1}',
        "asset_BBBUSDT_ob": HazelcastSerializationError("There is no suitable de-serializer for type 42"),
    })
    grid.bars._client = client  # the stale re-read is on the bar path's connection
    out = grid.get_assets(["asset_AAAUSDT_ob", "asset_BBBUSDT_ob", "asset_CCCUSDT_ob"])
    assert out["asset_AAAUSDT_ob"] == '{"x": 1}' and "asset_CCCUSDT_ob" not in out
    assert isinstance(out["asset_BBBUSDT_ob"], UnreadableValue) and "de-serializer" in out["asset_BBBUSDT_ob"].detail


def test_worker_config_reads_and_redacts_tls_auth() -> None:
    args = build_parser().parse_args(["--worker-id", "w"])
    cfg = config_from_args(args, {"HZ_USERNAME": "u", "HZ_PASSWORD": "s3cret"})
    assert dict(cfg.tls_auth) == {"creds_username": "u", "creds_password": "s3cret"}
    summary = cfg.summary()
    assert "s3cret" not in str(summary) and "creds_password=***" in summary["tls_auth"]
    with pytest.raises(ConfigError, match="HZ_USERNAME and HZ_PASSWORD"):
        config_from_args(args, {"HZ_USERNAME": "u"})
    assert config_from_args(args, {}).tls_auth == ()
