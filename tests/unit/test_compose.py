"""deploy/compose: validated without a Docker engine.

Parses the Compose file, checks every referenced file exists, parses every command with
the real CLI parsers, resolves the worker's environment with the real worker config, and
keeps the Compose member config in step with the local member config. If a ``docker``
binary with Compose is present, ``docker compose config`` is run as well.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from obf_features_worker import cli
from obf_features_worker.service import config
from tests.cluster import DEFAULT_HZ_VERSION

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def test_services_and_profiles(compose):
    svc = services(compose)
    assert set(svc) == {"hazelcast", "management-center", "mappings", "worker", "feeder"}
    assert svc["feeder"]["profiles"] == ["demo"]
    assert all("profiles" not in s for name, s in svc.items() if name != "feeder")
    assert svc["hazelcast"]["image"] == f"hazelcast/hazelcast:{DEFAULT_HZ_VERSION}"
    mc_version = svc["management-center"]["image"].split(":")[1]
    assert mc_version.split(".")[:2] == DEFAULT_HZ_VERSION.split(".")[:2], "MC minor must match the member"
    for name, s in svc.items():
        for dep in s.get("depends_on", []):
            assert dep in svc, f"{name} depends on unknown service {dep}"


def test_referenced_files_exist(compose):
    for name, s in services(compose).items():
        build = s.get("build")
        if build:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context}"
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
        for volume in s.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith((".", "/")):
                assert (COMPOSE_DIR / host).exists(), f"{name}: volume source {host}"


def test_dockerfile_copies_exist_and_are_not_ignored(compose):
    build = services(compose)["worker"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    copies = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _dest = line.split()[1:]
            copies.extend(sources)
    assert copies, "no COPY in the Dockerfile"
    ignore = Path(str(dockerfile) + ".dockerignore").read_text().splitlines()
    for src in copies:
        assert (context / src).exists(), f"COPY source {src} missing"
        assert f"!{src.rstrip('/')}" in [x.rstrip("/") for x in ignore], f"{src} excluded by the .dockerignore"
    env_sql = next(line for line in dockerfile.read_text().splitlines() if "OBF_SQL_FILE=" in line)
    assert "/app/deploy/sql/obf_mappings.sql" in env_sql and (ROOT / "deploy/sql/obf_mappings.sql").is_file()


def _commands(s: dict) -> list[list[str]]:
    cmds = []
    if "command" in s:
        cmds.append(s["command"])
    hc = s.get("healthcheck", {}).get("test")
    if hc:
        assert hc[0] == "CMD"
        cmds.append(hc[1:])
    return cmds


def test_every_command_parses_with_the_real_cli(compose, monkeypatch):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    seen = set()
    for name, s in services(compose).items():
        env = {k: str(v) for k, v in (s.get("environment") or {}).items()}
        for cmd in _commands(s):
            assert isinstance(cmd, list), f"{name}: use exec form (a list) for commands"
            assert cmd[0] in scripts, f"{name}: {cmd[0]} is not an installed entry point"
            seen.add(cmd[0])
            with monkeypatch.context() as m:
                for k, v in env.items():
                    m.setenv(k, v)
                if cmd[0] == "obf-features":
                    args = cli.build_parser().parse_args(cmd[1:])
                    if hasattr(args, "members"):
                        assert args.members == env["HZ_MEMBERS"] and args.cluster == env["HZ_CLUSTER"], name
                else:
                    args = config.build_parser().parse_args(cmd[1:])
                    cfg = config.config_from_args(args, environ=env)
                    assert list(cfg.members) == [env["HZ_MEMBERS"]] and cfg.cluster_name == env["HZ_CLUSTER"]
    assert seen == {"obf-features", "obf-features-worker"}


def test_worker_environment_names_are_worker_options(compose):
    known = {opt.env for opt in config.all_options()}
    env = services(compose)["worker"]["environment"]
    assert set(env) <= known, f"unknown worker variables: {sorted(set(env) - known)}"


def test_cluster_settings_agree(compose):
    svc = services(compose)
    member_cfg = yaml.safe_load((COMPOSE_DIR / "hazelcast.yaml").read_text())["hazelcast"]
    local_cfg = yaml.safe_load((ROOT / "deploy/hazelcast/hazelcast.yaml").read_text())["hazelcast"]
    assert member_cfg["map"] == local_cfg["map"], "compose and local member map configs drifted"
    assert member_cfg["jet"]["enabled"] is True
    cluster = member_cfg["cluster-name"]
    port = member_cfg["network"]["port"]["port"]
    assert "hazelcast" in member_cfg["network"]["join"]["tcp-ip"]["member-list"]
    mc = svc["management-center"]["environment"]
    assert mc["MC_DEFAULT_CLUSTER"] == cluster and mc["MC_DEFAULT_CLUSTER_MEMBERS"] == f"hazelcast:{port}"
    for name in ("mappings", "worker", "feeder"):
        env = svc[name]["environment"]
        assert env["HZ_CLUSTER"] == cluster and env["HZ_MEMBERS"] == f"hazelcast:{port}", name
    assert f"{port}:{port}" in svc["hazelcast"]["ports"]
    mount = svc["hazelcast"]["volumes"][0].split(":")[1]
    assert svc["hazelcast"]["environment"]["HAZELCAST_CONFIG"] == mount


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker binary: validated by parsing only")
def test_docker_compose_config_accepts_the_file():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("docker without the compose plugin: validated by parsing only")
    proc = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", "demo", "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
