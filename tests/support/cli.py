"""Run the real `oidc-server` console script against a test's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from oidc_server.config import Settings

OIDC_SERVER = str(Path(sys.executable).parent / "oidc-server")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes the CLI see the same database, keys and secret as ``settings``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OIDC_", "DATABASE_", "REDIS_"))
    }
    env.update(
        DATABASE_URL=settings.resolved_database_url,
        REDIS_URL=settings.redis_url,
        OIDC_KEYS_DIR=settings.oidc_keys_dir,
        OIDC_ISSUER=settings.oidc_issuer,
        INSTANCE_DIR=settings.instance_dir,
        SECRET_KEY=settings.secret_key,
        ACCESS_TOKEN_TTL=str(settings.access_token_ttl),
        PASSWORD_HASH_TIME_COST=str(settings.password_hash_time_cost),
        PASSWORD_HASH_MEMORY_COST=str(settings.password_hash_memory_cost),
        PASSWORD_HASH_PARALLELISM=str(settings.password_hash_parallelism),
        APP_ENV="test",
    )
    return env


def run_cli(
    settings: Settings, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OIDC_SERVER, *args],
        env=settings_env(settings),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
