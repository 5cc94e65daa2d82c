"""One default cluster name everywhere: every command, the worker and the adapter (issue 17)."""

from __future__ import annotations

import pytest

from engine_adapter.adapter import AdapterConfig
from obf_contract.cluster import DEFAULT_CLUSTER_NAME, DEFAULT_MEMBER
from obf_features_worker import cli
from obf_features_worker.dev.member import LocalMember
from obf_features_worker.service.config import WorkerConfig

# argv that parses for each command taking --cluster (required positionals filled in)
COMMAND_ARGV = {
    "member": ["member", "start"], "status": ["status"], "watch": ["watch"], "feed": ["feed"],
    "verify": ["verify", "--bar-idx", "1", "--assets", "BTCUSDT"],
    "plot": ["plot", "--out", "x.png"], "sql": ["sql"],
}


def test_the_shared_default_is_dev() -> None:
    assert DEFAULT_CLUSTER_NAME == "dev" and DEFAULT_MEMBER == "127.0.0.1:5701"


@pytest.mark.parametrize("name", sorted(COMMAND_ARGV))
def test_every_command_defaults_to_the_shared_cluster_name(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HZ_CLUSTER", raising=False)
    args = cli.build_parser(name).parse_args(COMMAND_ARGV[name])
    assert args.cluster == DEFAULT_CLUSTER_NAME


def test_worker_adapter_and_local_member_default_to_it() -> None:
    assert WorkerConfig().cluster_name == DEFAULT_CLUSTER_NAME
    assert AdapterConfig().cluster_name == DEFAULT_CLUSTER_NAME
    assert LocalMember().cluster_name == DEFAULT_CLUSTER_NAME  # was "obf-dev"
