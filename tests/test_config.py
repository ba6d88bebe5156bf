"""Settings come from the environment once; production refuses dev-only secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from oidc_server.config import ConfigError, Settings


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = Settings.from_env({}, instance_dir=str(tmp_path))
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'oidc_server.db'}"
    assert settings.redis_url == ""
    assert settings.oidc_issuer == "http://127.0.0.1:8000"
    assert (settings.access_token_ttl, settings.refresh_token_ttl) == (900, 2_592_000)
    assert settings.ratelimit_enabled is True


def test_variables_are_parsed_by_type(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "PORT": "9000",
            "RATELIMIT_ENABLED": "false",
            "OIDC_ISSUER": "https://id.example/",
            "INSTANCE_DIR": str(tmp_path),
        }
    )
    assert settings.port == 9000 and settings.ratelimit_enabled is False
    assert settings.oidc_issuer == "https://id.example"


@pytest.mark.parametrize(
    "env",
    [
        {"PORT": "eighty"},
        {"RATELIMIT_ENABLED": "maybe"},
        {"APP_ENV": "staging"},
        {"ACCESS_TOKEN_TTL": "0"},
    ],
)
def test_nonsense_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({**env, "INSTANCE_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    "url",
    [
        "memcached://:secret-pw@h",
        "redis://:secret-pw@h:6379/0?db=secret-pw",
        "redis+cluster://:secret-pw@h1:7000?ssl_ca_cert=/ca.pem",
        "redis+sentinel://:secret-pw@h1:26379",
    ],
)
def test_a_redis_url_that_cannot_be_understood_is_refused_without_its_password(
    url: str, tmp_path: Path
) -> None:
    # In any environment, before anything connects: the CLI and each worker would fail later.
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"REDIS_URL": url, "INSTANCE_DIR": str(tmp_path)})
    assert str(refused.value).startswith("REDIS_URL: ")
    assert "secret-pw" not in str(refused.value)


def test_a_dev_secret_key_is_generated_once_and_private(tmp_path: Path) -> None:
    first = Settings.from_env({"INSTANCE_DIR": str(tmp_path)})
    second = Settings.from_env({"INSTANCE_DIR": str(tmp_path)})
    assert len(first.secret_key) >= 32 and first.secret_key == second.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "s" * 40,
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1/test",
}


def test_production_with_real_secrets_starts(tmp_path: Path) -> None:
    assert Settings.from_env({**PRODUCTION, "INSTANCE_DIR": str(tmp_path)}).is_production


@pytest.mark.parametrize(
    "override",
    [
        {"SECRET_KEY": ""},
        {"SECRET_KEY": "short"},
        {"REDIS_URL": ""},
        {"DATABASE_URL": ""},
        {"DATABASE_URL": "sqlite:///x.db"},
        {"DATABASE_REPLICA_URL": "sqlite:///replica.db"},
    ],
)
def test_production_refuses_dev_only_settings(override: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({**PRODUCTION, **override, "INSTANCE_DIR": str(tmp_path)})
