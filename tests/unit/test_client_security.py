"""TLS/auth passthrough: env -> HazelcastClient keyword arguments, validated, secrets redacted."""

from __future__ import annotations

from pathlib import Path

import pytest
from hazelcast.config import Config

from obf_contract.security import describe, tls_auth_settings


def test_nothing_set_means_nothing_passed() -> None:
    assert tls_auth_settings({}) == {}
    assert tls_auth_settings({"HZ_SSL_ENABLED": "false"}) == {}
    assert describe({}) == "tls=off auth=off"


def test_full_settings_are_accepted_by_the_client_config(tmp_path: Path) -> None:
    files = {}
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
        files[name] = str(tmp_path / name)
    env = {"HZ_SSL_ENABLED": "true", "HZ_SSL_CAFILE": files["ca.pem"], "HZ_SSL_CERTFILE": files["cert.pem"],
           "HZ_SSL_KEYFILE": files["key.pem"], "HZ_SSL_PASSWORD": "s3cret", "HZ_SSL_CHECK_HOSTNAME": "yes",
           "HZ_SSL_PROTOCOL": "TLSv1_3", "HZ_USERNAME": "obf", "HZ_PASSWORD": "hunter2"}
    settings = tls_auth_settings(env)
    assert settings == {"ssl_enabled": True, "ssl_cafile": files["ca.pem"], "ssl_certfile": files["cert.pem"],
                        "ssl_keyfile": files["key.pem"], "ssl_password": "s3cret", "ssl_check_hostname": True,
                        "ssl_protocol": "TLSv1_3", "creds_username": "obf", "creds_password": "hunter2"}
    config = Config.from_dict(settings)  # the client's own validation of every keyword
    assert config.ssl_enabled and config.creds_username == "obf"
    text = describe(settings)
    assert "s3cret" not in text and "hunter2" not in text and "creds_password=***" in text


@pytest.mark.parametrize("env,match", [
    ({"HZ_SSL_CAFILE": "/etc/hosts"}, "HZ_SSL_ENABLED is not true"),
    ({"HZ_SSL_ENABLED": "maybe"}, "HZ_SSL_ENABLED must be true or false"),
    ({"HZ_SSL_ENABLED": "1", "HZ_SSL_CAFILE": "/nonexistent/ca.pem"}, "HZ_SSL_CAFILE"),
    ({"HZ_SSL_ENABLED": "1", "HZ_SSL_PROTOCOL": "SSLv3"}, "HZ_SSL_PROTOCOL"),
    ({"HZ_USERNAME": "obf"}, "together"),
    ({"HZ_PASSWORD": "x"}, "together"),
])
def test_bad_settings_fail_fast(env: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tls_auth_settings(env)
