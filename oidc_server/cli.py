"""The operator's command line: ``oidc-server``."""

from __future__ import annotations

import json
import sys

import click

from . import accounts, audit
from . import roles as roles_domain
from .bootstrap import ensure_first_party_client
from .clients import GRANT_TYPES, SCOPES_SUPPORTED, ClientError, clients_changed, create_client
from .config import ConfigError, Settings
from .db import Database, upgrade
from .keys import KeyRing
from .models import Role, UserRole
from .security import PasswordHasher
from .tokens.redis_store import RedisTokenStore
from .tokens.store import StoreUnavailable


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Operate the cinema's OAuth 2.0 / OpenID Connect server."""


@main.command()
@click.option("--host", default=None, help="Interface to listen on (default: HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the development server (single process; production: python -m oidc_server.serve)."""
    from .app import create_app

    settings = _settings()
    app = create_app(settings)
    app.run(host=host or settings.host, port=port or settings.port, threaded=True)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="heads", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations, then create the first-party client if it is missing."""
    settings = _settings()
    upgrade(settings.resolved_database_url, revision)
    database = Database(settings.resolved_database_url)
    with database.session() as session:
        created = ensure_first_party_client(session, settings)
    database.dispose()
    if created:
        _clients_changed(settings)
        click.echo(f"created first-party client {settings.first_party_client_id}")
    click.echo("database is up to date")


def _clients_changed(settings: Settings) -> None:
    """Tell running workers to drop cached clients (they share Redis with the CLI); returns
    once every request they receive sees the change (``clients.clients_changed``)."""
    if settings.redis_url:
        clients_changed(RedisTokenStore.from_url(settings.redis_url))


@main.group()
def keys() -> None:
    """Signing keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Make a new current signing key; old keys stay in the JWKS until their tokens expire."""
    settings = _settings()
    ring = KeyRing(settings.oidc_keys_dir, max_token_lifetime=settings.access_token_ttl)
    key = ring.rotate()
    click.echo(json.dumps({"kid": key.kid, "published": [k.kid for k in ring.published()]}))


@main.group()
def clients() -> None:
    """OAuth clients."""


@clients.command("create")
@click.option("--name", required=True, help="Human-readable name.")
@click.option(
    "--grant-type",
    "grant_types",
    multiple=True,
    required=True,
    type=click.Choice(GRANT_TYPES),
    help="Allowed grant type; repeat for several.",
)
@click.option(
    "--scope", default="", help=f"Space-separated scopes among: {' '.join(SCOPES_SUPPORTED)}."
)
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="Exact redirect URI for authorization_code; repeat for several.",
)
@click.option(
    "--post-logout-redirect-uri",
    "post_logout_redirect_uris",
    multiple=True,
    help="Where /logout may send the browser back to; repeat for several.",
)
@click.option("--public", is_flag=True, help="Public client: no secret (PKCE only).")
@click.option("--first-party", is_flag=True, help="One of the cinema's own apps.")
@click.option("--json", "as_json", is_flag=True, help="Print the credentials as JSON.")
def clients_create(
    name: str,
    grant_types: tuple[str, ...],
    scope: str,
    redirect_uris: tuple[str, ...],
    post_logout_redirect_uris: tuple[str, ...],
    public: bool,
    first_party: bool,
    as_json: bool,
) -> None:
    """Register a client. Its secret is printed once and stored only as a keyed hash."""
    settings = _settings()
    database = Database(settings.resolved_database_url)
    try:
        with database.session() as session:
            new = create_client(
                session,
                settings.secret_key,
                name=name,
                grant_types=list(grant_types),
                scopes=scope.split(),
                confidential=not public,
                first_party=first_party,
                redirect_uris=list(redirect_uris),
                post_logout_redirect_uris=list(post_logout_redirect_uris),
            )
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        database.dispose()
    _clients_changed(settings)
    credentials = {"client_id": new.client_id, "client_secret": new.client_secret}
    if as_json:
        click.echo(json.dumps(credentials))
    else:
        click.echo(f"client_id:     {new.client_id}")
        if new.client_secret:
            click.echo(f"client_secret: {new.client_secret}  (shown once; store it now)")


@main.group()
def users() -> None:
    """Users."""


@users.command("create-admin")
@click.argument("email")
def users_create_admin(email: str) -> None:
    """Create a user with the admin role. The password is prompted for, or read from stdin."""
    settings = _settings()
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise click.ClickException("the password must have at least 8 characters")
    hasher = PasswordHasher(
        settings.password_hash_time_cost,
        settings.password_hash_memory_cost,
        settings.password_hash_parallelism,
    )
    database = Database(settings.resolved_database_url)
    try:
        with database.session() as session:
            user = accounts.create_user(session, hasher, email, password)
            admin = session.query(Role).filter_by(name="admin").one_or_none()
            if admin is None:
                admin = Role(name="admin", description="Full administrative access")
                session.add(admin)
                session.flush()
            session.add(UserRole(user_id=user.id, role_id=admin.id))
            user_id = str(user.id)
    except accounts.AccountError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        database.dispose()
    click.echo(json.dumps({"id": user_id, "login": email.lower(), "roles": ["admin"]}))


# Roles and the audit trail (issue 4) ------------------------------------------------------


def _role_cache(settings: Settings) -> roles_domain.RoleCache:
    """The servers' role cache, so that a change made here shows in their next check."""
    # The token store's own client: the same Redis deployment, reached the same way.
    client = RedisTokenStore.from_url(settings.redis_url).redis if settings.redis_url else None
    return roles_domain.role_cache_for(client, settings.roles_cache_ttl)


def _change_user_role(email: str, role_name: str, grant: bool) -> None:
    settings = _settings()
    database = Database(settings.resolved_database_url)
    cache = _role_cache(settings)
    try:
        with database.sessions() as session:
            user = accounts.find_user_by_login(session, email)
            if user is None:
                raise click.ClickException(f"no user with the login {email!r}")
            role = roles_domain.find_role_by_name(session, role_name)
            admin = roles_domain.RoleAdmin(session, cache, actor=audit.CLI_ACTOR)
            if grant:
                _, changed = admin.assign(user.id, role.id)
            else:
                changed = admin.revoke(user.id, role.id)
            result = {"user_id": str(user.id), "login": user.login, "role": role.name}
    except roles_domain.RoleError as exc:
        raise click.ClickException(exc.message) from None
    except StoreUnavailable:
        raise click.ClickException(
            "Redis (REDIS_URL) is unreachable, so the servers' role caches cannot be "
            "invalidated; nothing was changed"
        ) from None
    finally:
        database.dispose()
    click.echo(json.dumps({**result, "granted" if grant else "revoked": changed}))


@main.group("roles")
def roles_group() -> None:
    """Users' roles (the roles themselves are managed through the roles API)."""


@roles_group.command("grant")
@click.argument("email")
@click.argument("role")
def roles_grant(email: str, role: str) -> None:
    """Give the user with login EMAIL the role ROLE; audited with the actor "cli".

    Prints {"user_id", "login", "role", "granted"}; granted is false if the user had it.
    """
    _change_user_role(email, role, grant=True)


@roles_group.command("revoke")
@click.argument("email")
@click.argument("role")
def roles_revoke(email: str, role: str) -> None:
    """Take the role ROLE from the user with login EMAIL; audited with the actor "cli".

    Prints {"user_id", "login", "role", "revoked"}; revoked is false if the user did not have it.
    """
    _change_user_role(email, role, grant=False)


@main.group("audit")
def audit_group() -> None:
    """The audit trail of changes (roles and their assignments)."""


@audit_group.command("list")
@click.option(
    "--since",
    default=None,
    help="Only entries from this time on: ISO 8601 (UTC if no offset) or an age (30m, 12h, 7d).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, audit.MAX_LIST_LIMIT),
    default=100,
    show_default=True,
    help="At most this many entries.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def audit_list(since: str | None, limit: int, as_json: bool) -> None:
    """List audit entries, newest first: when, actor (client id or "cli"), action, target."""
    try:
        since_at = audit.parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    settings = _settings()
    database = Database(settings.resolved_database_url)
    try:
        with database.sessions() as session:
            entries = [audit.as_dict(e) for e in audit.list_entries(session, since_at, limit)]
    finally:
        database.dispose()
    if as_json:
        click.echo(json.dumps(entries))
        return
    for entry in entries:
        details = json.dumps(entry["details"], sort_keys=True)
        click.echo(
            f"{entry['created_at']}  {entry['actor']}  {entry['action']}  "
            f"{entry['target'] or '-'}  {details}"
        )


# Data lifecycle (issue 7) -----------------------------------------------------------------


@main.group("history")
def history_group() -> None:
    """Login history."""


@history_group.command("purge")
@click.option(
    "--older-than",
    "older_than",
    type=click.IntRange(min=1),
    default=None,
    metavar="DAYS",
    help="Delete entries older than DAYS (default: LOGIN_HISTORY_RETENTION_DAYS, 365).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Entries deleted per transaction.",
)
def history_purge(older_than: int | None, batch_size: int) -> None:
    """Delete old login history, a batch per short transaction: safe on a live database.

    A partitioned history (`history partition`) first drops every month wholly past the cutoff.
    Prints {"deleted", "dropped_partitions", "cutoff", "older_than_days"}. Run it daily (cron,
    a Kubernetes CronJob); an interrupted run is simply run again.
    """
    from . import lifecycle
    from .history_partitions import LockNotAvailable

    settings = _settings()
    days = older_than if older_than is not None else settings.login_history_retention_days
    if days < 1:
        raise click.ClickException("LOGIN_HISTORY_RETENTION_DAYS must be at least 1")
    database = Database(settings.resolved_database_url)
    try:
        purge = lifecycle.purge_login_history(database.sessions, days, batch_size=batch_size)
    except LockNotAvailable as error:  # dropping a month waited too long for its lock
        raise click.ClickException(str(error)) from None
    finally:
        database.dispose()
    click.echo(
        json.dumps(
            {
                "deleted": purge.deleted,
                "dropped_partitions": purge.dropped_partitions,
                "cutoff": purge.cutoff.isoformat(),
                "older_than_days": days,
            }
        )
    )


@history_group.command("partition")
@click.option(
    "--months-ahead",
    type=click.IntRange(0, 24),
    default=3,
    show_default=True,
    help="Create partitions up to this many months after the current one.",
)
def history_partition(months_ahead: int) -> None:
    """Partition the login history by month (PostgreSQL), or create the months coming up.

    The first run converts the live table without stopping sign-ins: the existing rows
    become one partition, later months get their own, and `history purge` then drops whole
    months past the retention. Run it daily beside the purge; a month it did not create in
    time lands in a default partition and is moved out by the next run. Prints {"converted",
    "created", "partitions", "prepare_seconds", "swap_seconds"} (the swap is the only step
    that holds the table's lock).
    """
    from . import history_partitions

    database = Database(_settings().resolved_database_url)
    try:
        result = history_partitions.partition_login_history(
            database.engine, months_ahead=months_ahead
        )
    except history_partitions.NotPostgreSQL as error:
        dialect = database.engine.dialect.name
        raise click.ClickException(f"{error}; this database is {dialect}") from None
    except history_partitions.LockNotAvailable as error:
        raise click.ClickException(str(error)) from None
    finally:
        database.dispose()
    click.echo(
        json.dumps(
            {
                "converted": result.converted,
                "created": result.created,
                "partitions": [partition.name for partition in result.partitions],
                "prepare_seconds": round(result.prepare_seconds, 3),
                "swap_seconds": round(result.swap_seconds, 3),
            }
        )
    )


@users.command("delete")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Erase without asking for confirmation.")
def users_delete(email: str, yes: bool) -> None:
    """Erase the user with login EMAIL and all their data (right to erasure).

    Their sessions end, their roles, linked Google/Yandex accounts and login history are
    deleted, and the audit trail keeps only "user.erased" with a pseudonym. Prints
    {"id", "pseudonym", "sessions_ended"}. With REDIS_URL the servers' sessions end at once;
    without it (the embedded mode) this command cannot reach a running server's in-process
    sessions, whose access tokens then stay valid for verifiers that check them offline until
    they expire (ACCESS_TOKEN_TTL); this server refuses them at once.
    """
    from . import lifecycle
    from .tokens.memory_store import MemoryTokenStore

    if not yes:
        click.confirm(f"Erase {email} and all their data? This cannot be undone", abort=True)
    settings = _settings()
    store = (
        RedisTokenStore.from_url(settings.redis_url) if settings.redis_url else MemoryTokenStore()
    )
    database = Database(settings.resolved_database_url)
    try:
        with database.sessions() as session:
            user = accounts.find_user_by_login(session, email)
            if user is None:
                raise click.ClickException(f"no user with the login {email!r}")
            user_id = user.id
            erasure = lifecycle.erase_user(
                session,
                store,
                _role_cache(settings),
                user_id,
                actor=audit.CLI_ACTOR,
                initiated_by="operator",
                secret_key=settings.secret_key,
            )
    except lifecycle.UserNotFound:
        raise click.ClickException(f"no user with the login {email!r}") from None
    except StoreUnavailable:
        raise click.ClickException(
            "Redis (REDIS_URL) is unreachable, so the user's sessions cannot be ended; "
            "nothing was changed"
        ) from None
    finally:
        database.dispose()
    if not settings.redis_url:
        click.echo(
            "note: no REDIS_URL, so a running server's in-process sessions were not reached",
            err=True,
        )
    click.echo(
        json.dumps(
            {
                "id": str(user_id),
                "pseudonym": erasure.pseudonym,
                "sessions_ended": erasure.sessions_ended,
            }
        )
    )
