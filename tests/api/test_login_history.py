"""/api/v1/users/me/login-history: newest first, keyset-paginated, served by its index."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Connection, insert, text

from oidc_server.accounts import create_user
from oidc_server.history_pages import page_query
from oidc_server.models import LoginHistory, User

from ..conftest import PASSWORD, bearer
from ..support.accounts import SAFARI_ON_IPHONE, api_login, signed_in

INDEX = "ix_login_history_user_id_logged_in_at"
START = datetime(2026, 1, 1, tzinfo=UTC)


def add_history(services: Any, user_id: uuid.UUID, times: list[datetime]) -> list[uuid.UUID]:
    """Insert one successful entry per time; returns their ids."""
    rows = [
        {
            "id": uuid.uuid4(),
            "user_id": user_id,
            "logged_in_at": moment,
            "method": "password",
            "success": True,
            "user_agent": "pytest",
            "ip": "127.0.0.1",
            "device": "Other on Other (other)",
        }
        for moment in times
    ]
    with services.db.session() as session:
        session.execute(insert(LoginHistory), rows)
    return [row["id"] for row in rows]


def history(client: FlaskClient, token: str, **query: Any) -> Any:
    return client.get("/api/v1/users/me/login-history", query_string=query, headers=bearer(token))


def walk(client: FlaskClient, token: str, limit: int) -> list[list[dict[str, Any]]]:
    """Every page, following next_cursor until it is null."""
    pages, cursor = [], None
    while True:
        query = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = history(client, token, **query)
        assert response.status_code == 200, response.json
        pages.append(response.json["items"])
        cursor = response.json["next_cursor"]
        if cursor is None:
            return pages


def test_entries_come_newest_first_failures_flagged(
    client: FlaskClient, user: User, services: Any
) -> None:
    assert api_login(client, password="a wrong guess", ip="192.0.2.1").status_code == 401
    tokens = signed_in(client, ip="192.0.2.2", user_agent=SAFARI_ON_IPHONE)
    response = history(client, tokens["access_token"])
    assert response.status_code == 200
    items = response.json["items"]
    assert response.json["next_cursor"] is None
    assert [(e["success"], e["ip"]) for e in items] == [(True, "192.0.2.2"), (False, "192.0.2.1")]
    newest = items[0]
    assert set(newest) == {
        "id",
        "user_id",
        "user_agent",
        "ip",
        "logged_in_at",
        "method",
        "success",
        "device",
    }
    assert newest["user_id"] == str(user.id)
    assert newest["method"] == "password"
    assert newest["user_agent"] == SAFARI_ON_IPHONE
    assert "iOS" in newest["device"]
    assert datetime.fromisoformat(newest["logged_in_at"]) >= datetime.fromisoformat(
        items[1]["logged_in_at"]
    )


def test_only_the_callers_entries_are_shown(client: FlaskClient, user: User, services: Any) -> None:
    with services.db.session() as session:
        neighbour = create_user(session, services.hasher, "neighbour@example.com", PASSWORD)
    add_history(services, neighbour.id, [START + timedelta(minutes=n) for n in range(5)])
    tokens = signed_in(client)
    items = history(client, tokens["access_token"]).json["items"]
    assert {e["user_id"] for e in items} == {str(user.id)}


def test_pages_cover_every_entry_once_in_order(
    client: FlaskClient, user: User, services: Any
) -> None:
    # 45 entries, five of them sharing one instant: ids break the tie across a page boundary.
    times = [START + timedelta(seconds=n) for n in range(40)] + [START + timedelta(seconds=19)] * 5
    add_history(services, user.id, times)
    tokens = signed_in(client)
    pages = walk(client, tokens["access_token"], limit=10)
    assert [len(page) for page in pages] == [10, 10, 10, 10, 6]  # 45 + this login
    entries = [entry for page in pages for entry in page]
    assert len({e["id"] for e in entries}) == 46
    keys = [(datetime.fromisoformat(e["logged_in_at"]), uuid.UUID(e["id"])) for e in entries]
    assert keys == sorted(keys, reverse=True)


def test_the_default_page_holds_20_entries(client: FlaskClient, user: User, services: Any) -> None:
    add_history(services, user.id, [START + timedelta(seconds=n) for n in range(30)])
    tokens = signed_in(client)
    body = history(client, tokens["access_token"]).json
    assert len(body["items"]) == 20
    assert body["next_cursor"]


def test_a_cursor_keeps_its_place_when_new_logins_arrive(
    client: FlaskClient, user: User, services: Any
) -> None:
    add_history(services, user.id, [START + timedelta(seconds=n) for n in range(6)])
    tokens = signed_in(client)
    first = history(client, tokens["access_token"], limit=3).json
    signed_in(client)  # a newer entry lands on top; the next page must not repeat anything
    second = history(client, tokens["access_token"], limit=3, cursor=first["next_cursor"]).json
    seen = {e["id"] for e in first["items"]}
    assert not seen & {e["id"] for e in second["items"]}
    assert datetime.fromisoformat(second["items"][0]["logged_in_at"]) < datetime.fromisoformat(
        first["items"][-1]["logged_in_at"]
    )


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", "9" * 30])
def test_a_limit_outside_1_to_100_is_422(client: FlaskClient, user: User, limit: str) -> None:
    tokens = signed_in(client)
    response = history(client, tokens["access_token"], limit=limit)
    assert response.status_code == 422
    assert list(response.json["details"]) == ["limit"]


@pytest.mark.parametrize(
    "cursor",
    ["garbage", "!!!!", "MjAyNnxub3QtYS11dWlk", "x" * 201, "MjAyNi0wMS0wMVQwMDowMDowMHww"],
)
def test_a_cursor_we_did_not_make_is_422(client: FlaskClient, user: User, cursor: str) -> None:
    tokens = signed_in(client)
    response = history(client, tokens["access_token"], cursor=cursor)
    assert response.status_code == 422
    assert list(response.json["details"]) == ["cursor"]


def test_history_needs_a_users_bearer_token(client: FlaskClient) -> None:
    assert client.get("/api/v1/users/me/login-history").status_code == 401


# The query plan -----------------------------------------------------------------------------

OWN_ENTRIES = 30_000


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


def _explain_postgres(connection: Connection, sql: str) -> list[dict[str, Any]]:
    raw = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}").scalar()
    document = raw if isinstance(raw, list) else json.loads(raw)
    return _plan_nodes(document[0]["Plan"])


def _fill_postgres(connection: Connection, user_id: uuid.UUID) -> None:
    """30,000 entries for the user and 30,000 spread over 300 others, then fresh statistics."""
    connection.execute(
        text(
            "INSERT INTO login_history (id, user_id, logged_in_at, method, success, device) "
            "SELECT gen_random_uuid(), :user_id, :start + g * interval '1 second', "
            "'password', true, 'pc' FROM generate_series(1, :n) AS g"
        ),
        {"user_id": user_id, "start": START, "n": OWN_ENTRIES},
    )
    connection.execute(
        text(
            "INSERT INTO users (id, login, is_active, created_at, updated_at) "
            "SELECT gen_random_uuid(), 'other' || g || '@example.com', true, now(), now() "
            "FROM generate_series(1, 300) AS g"
        )
    )
    connection.execute(
        text(
            "INSERT INTO login_history (id, user_id, logged_in_at, method, success, device) "
            "SELECT gen_random_uuid(), u.id, :start + g * interval '1 minute', "
            "'password', true, 'pc' FROM users u, generate_series(1, 100) AS g "
            "WHERE u.login LIKE 'other%'"
        ),
        {"start": START},
    )
    connection.exec_driver_sql("ANALYZE login_history")


def _deep_position(connection: Connection, user_id: uuid.UUID) -> tuple[datetime, uuid.UUID]:
    """Where page 1,250 of 20 starts: 25,000 entries into the user's history."""
    row = connection.execute(
        text(
            "SELECT logged_in_at, id FROM login_history WHERE user_id = :user_id "
            "ORDER BY logged_in_at DESC, id DESC OFFSET 25000 LIMIT 1"
        ),
        {"user_id": user_id},
    ).one()
    return row[0], row[1]


def test_a_deep_page_is_a_short_backward_range_scan_of_the_index(user: User, services: Any) -> None:
    """EXPLAIN ANALYZE of page 1,250: the index alone orders and bounds it, reading 21 rows.

    Dropping the index inside a rolled-back transaction shows what the planner does without
    it for the same query: scan the whole table and sort, reading tens of thousands of rows.
    """
    engine = services.db.engine
    if engine.dialect.name != "postgresql":
        _check_sqlite_plan(services, user)
        return
    with engine.begin() as connection:
        _fill_postgres(connection, user.id)
    with engine.connect() as connection:
        position = _deep_position(connection, user.id)
        sql = str(
            page_query(user.id, 20, position).compile(
                dialect=engine.dialect, compile_kwargs={"literal_binds": True}
            )
        )
        nodes = _explain_postgres(connection, sql)
        types = [node["Node Type"] for node in nodes]
        assert not {"Seq Scan", "Sort", "Incremental Sort", "Bitmap Heap Scan"} & set(types)
        (scan,) = [n for n in nodes if n["Node Type"] in ("Index Scan", "Index Only Scan")]
        assert scan["Index Name"] == INDEX
        assert scan["Scan Direction"] == "Backward"
        # The keyset condition is part of the index range, not a filter applied afterwards.
        assert "ROW(logged_in_at, id) <" in scan["Index Cond"]
        assert "Filter" not in scan
        assert scan["Actual Rows"] <= 21
        connection.rollback()

        with connection.begin() as transaction:
            connection.exec_driver_sql(f"DROP INDEX {INDEX}")
            without = _explain_postgres(connection, sql)
            transaction.rollback()
    assert all(node.get("Index Name") != INDEX for node in without)
    assert any("Seq Scan" in node["Node Type"] for node in without)
    assert any(node["Node Type"] == "Sort" for node in without)
    scanned = sum(
        node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
        + node.get("Rows Removed by Filter", 0)
        for node in without
        if "Seq Scan" in node["Node Type"]
    )
    assert scanned >= OWN_ENTRIES


def _check_sqlite_plan(services: Any, user: User) -> None:
    """The embedded database: SQLite's plan searches the same index and sorts nothing."""
    add_history(services, user.id, [START + timedelta(seconds=n) for n in range(2_000)])
    with services.db.engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        # Raw SQL on SQLite sees UUIDs as 32 hex digits and times as naive text.
        row = connection.execute(
            text(
                "SELECT logged_in_at, id FROM login_history WHERE user_id = :user_id "
                "ORDER BY logged_in_at DESC, id DESC LIMIT 1 OFFSET 1500"
            ),
            {"user_id": user.id.hex},
        ).one()
        moment = datetime.fromisoformat(row[0]).replace(tzinfo=UTC)
        sql = str(
            page_query(user.id, 20, (moment, uuid.UUID(hex=row[1]))).compile(
                dialect=services.db.engine.dialect, compile_kwargs={"literal_binds": True}
            )
        )
        details = [r[-1] for r in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    assert any(INDEX in detail and detail.startswith("SEARCH") for detail in details), details
    assert not any("TEMP B-TREE" in detail for detail in details), details
