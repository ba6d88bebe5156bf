"""Settings, read once from the environment.

Every variable the server understands is listed in ``Settings`` with its default. The
defaults are the embedded mode of ``make run``: SQLite under ``instance/``, in-process
stores, keys under ``keys/``. ``APP_ENV=production`` refuses to start with dev-only secrets.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

GOOGLE_DISCOVERY_URL = "https://accounts.google.com/.well-known/openid-configuration"
YANDEX_AUTHORIZE_URL = "https://oauth.yandex.ru/authorize"
YANDEX_TOKEN_URL = "https://oauth.yandex.ru/token"
YANDEX_USERINFO_URL = "https://login.yandex.ru/info"


class ConfigError(RuntimeError):
    """The environment asks for something the server refuses to run with."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"not an integer: {value!r}") from None


@dataclass(frozen=True)
class Settings:
    """The server's configuration. Field names are the environment variable names, lowercased."""

    app_env: str = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = ""
    # A read replica of DATABASE_URL for reads that tolerate replication lag and feed no
    # cache (login-history pages); unset, they go to DATABASE_URL. docs/scaling.md.
    database_replica_url: str = ""
    redis_url: str = ""
    oidc_issuer: str = "http://127.0.0.1:8000"
    oidc_keys_dir: str = str(PROJECT_ROOT / "keys")
    instance_dir: str = str(PROJECT_ROOT / "instance")
    well_known_templates_dir: str = str(PROJECT_ROOT / ".well-known-templates")
    access_token_ttl: int = 900
    access_token_audience: str = "cinema"
    refresh_token_ttl: int = 2_592_000
    # Keyed hash of client secrets and signing of server-side state. Generated and kept under
    # instance/ in development; must be given in production.
    secret_key: str = ""
    ratelimit_enabled: bool = True
    ratelimit_default: str = "600 per minute"
    ratelimit_login: str = "10 per minute"
    ratelimit_login_per_account: str = "20 per hour"
    ratelimit_register: str = "5 per minute"
    ratelimit_refresh: str = "60 per minute"
    ratelimit_token: str = "1200 per minute"
    # Account API (issue 3): further limits (oidc_server/ratelimit.py), and the per-account
    # backoff after failed logins (oidc_server/login_backoff.py): from the THRESHOLD-th failure
    # within WINDOW seconds of each other, each attempt waits BASE_DELAY * 2**n seconds, at most
    # MAX_DELAY; THRESHOLD 0 turns it off. RATELIMIT_ENABLED=false switches the backoff off too.
    ratelimit_register_conflict: str = "10 per hour"
    ratelimit_change_password: str = "10 per minute"
    login_backoff_threshold: int = 5
    login_backoff_base_delay: int = 1
    login_backoff_max_delay: int = 300
    login_backoff_window: int = 900
    max_content_length: int = 64 * 1024
    # argon2id parameters (RFC 9106 second recommended option is 64 MiB, t=3, p=4).
    password_hash_time_cost: int = 3
    password_hash_memory_cost: int = 65_536
    password_hash_parallelism: int = 4
    first_party_client_id: str = "cinema-app"
    trust_proxy_headers: bool = False
    log_level: str = "INFO"
    google_client_id: str = ""
    google_client_secret: str = ""
    google_metadata_url: str = GOOGLE_DISCOVERY_URL
    yandex_client_id: str = ""
    yandex_client_secret: str = ""
    yandex_authorize_url: str = YANDEX_AUTHORIZE_URL
    yandex_token_url: str = YANDEX_TOKEN_URL
    yandex_userinfo_url: str = YANDEX_USERINFO_URL
    social_redirect_uris: tuple[str, ...] = field(default_factory=tuple)
    # Google and Yandex sign-in (issue 5): seconds a provider may take to answer one request,
    # and seconds a browser sign-in's state, nonce and PKCE verifier wait for the callback.
    social_http_timeout: int = 10
    social_state_ttl: int = 600
    # Roles API (issue 4): seconds a user's cached role ids live in Redis. Changes invalidate
    # the entry at once; the TTL only bounds staleness if an invalidation is ever lost (Redis
    # down between a commit and its invalidation). 0 turns the cache off: every check asks
    # the database.
    roles_cache_ttl: int = 300
    # Hardening (issue 7; docs/security.md). CORS_ORIGINS: space-separated browser origins
    # ("https://app.cinema.example") allowed to call this server from scripts; empty means
    # none, and "*" is refused (oidc_server/cors.py). LOGIN_HISTORY_RETENTION_DAYS: what
    # `oidc-server history purge` keeps by default. HSTS_MAX_AGE: seconds of the
    # Strict-Transport-Security header sent over TLS or when OIDC_ISSUER is https; 0: none.
    cors_origins: str = ""
    login_history_retention_days: int = 365
    hsts_max_age: int = 31_536_000

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.instance_dir) / 'oidc_server.db'}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then apply ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.name.upper())
            if raw is None:
                continue
            if f.type == "int":
                values[f.name] = _int(raw)
            elif f.type == "bool":
                values[f.name] = _bool(raw)
            elif f.name == "social_redirect_uris":
                values[f.name] = tuple(raw.split())
            else:
                values[f.name] = raw
        settings = cls(**values)
        settings = replace(settings, **overrides) if overrides else settings
        settings = replace(settings, oidc_issuer=settings.oidc_issuer.rstrip("/"))
        settings.check()
        return settings.with_secret_key()

    def check(self) -> None:
        """Refuse settings that cannot work or are unsafe in production."""
        if self.app_env not in {"development", "test", "production"}:
            raise ConfigError("APP_ENV must be development, test or production")
        if self.access_token_ttl <= 0 or self.refresh_token_ttl <= 0:
            raise ConfigError("token lifetimes must be positive")
        if self.redis_url:
            from .tokens.redis_connect import RedisUrlError, check_url

            try:
                check_url(self.redis_url)
            except RedisUrlError as refused:
                raise ConfigError(f"REDIS_URL: {refused}") from None
        if not self.is_production:
            return
        if len(self.secret_key) < 32:
            raise ConfigError("APP_ENV=production needs SECRET_KEY of at least 32 characters")
        if not self.redis_url:
            raise ConfigError(
                "APP_ENV=production needs REDIS_URL: in-process stores are not shared "
                "between worker processes"
            )
        if not self.database_url or self.database_url.startswith("sqlite"):
            raise ConfigError("APP_ENV=production needs DATABASE_URL pointing at PostgreSQL")
        if self.database_replica_url.startswith("sqlite"):
            raise ConfigError("DATABASE_REPLICA_URL must point at a PostgreSQL replica")

    def with_secret_key(self) -> Settings:
        """Fill in a development secret key, generated once and kept in the instance folder."""
        if self.secret_key:
            return self
        path = Path(self.instance_dir) / "secret_key"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Written aside and linked into place so that concurrent first starts agree.
            tmp = path.with_name(f".secret_key.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return replace(self, secret_key=path.read_text().strip())
