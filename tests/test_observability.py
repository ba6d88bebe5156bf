"""Request ids, access logs, log redaction and Prometheus metrics (oidc_server/observability.py)."""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from oidc_server import observability

from .conftest import PASSWORD, bearer, password_login
from .support.observing import LogCapture, metric, sample

GENERATED_ID = re.compile(r"[0-9a-f]{32}")
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiIxMjMiLCJleHAiOjF9.c2lnbmF0dXJlLWJ5dGVz"


# Request ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    ["abc-123", "7c9e6679-7425-40de-944b-e07fc1f90ae7", "a" * 128, "Root=1-67891233:x.y+z/="],
)
def test_a_plain_request_id_is_kept_and_echoed(client: FlaskClient, given: str) -> None:
    response = client.get("/health/live", headers={"X-Request-ID": given})
    assert response.headers["X-Request-ID"] == given


@pytest.mark.parametrize(
    "given",
    ["", "a" * 129, "two words", 'quote"d', "semi;colon", "<script>", "ünïcode"],
)
def test_an_unsafe_request_id_is_replaced(client: FlaskClient, given: str) -> None:
    response = client.get("/health/live", headers={"X-Request-ID": given})
    assert GENERATED_ID.fullmatch(response.headers["X-Request-ID"])


def test_every_request_without_an_id_gets_a_new_one(client: FlaskClient) -> None:
    ids = {client.get("/health/live").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5
    assert all(GENERATED_ID.fullmatch(i) for i in ids)


def test_error_responses_carry_the_request_id_too(client: FlaskClient) -> None:
    missing = client.get("/no/such/page", headers={"X-Request-ID": "err-1"})
    refused = client.get("/oauth/userinfo", headers={"X-Request-ID": "err-2"})
    assert (missing.status_code, missing.headers["X-Request-ID"]) == (404, "err-1")
    assert (refused.status_code, refused.headers["X-Request-ID"]) == (401, "err-2")


# Access log and request id in every line --------------------------------------------------


def test_each_request_writes_one_access_line_with_its_id(
    client: FlaskClient, logs: LogCapture
) -> None:
    client.get("/.well-known/jwks.json?x=1", headers={"X-Request-ID": "access-1"})
    (line,) = [entry for entry in logs.lines() if entry["logger"] == "oidc_server.access"]
    assert line["request_id"] == "access-1"
    assert line["method"] == "GET"
    assert line["path"] == "/.well-known/jwks.json"
    assert line["route"] == "/.well-known/jwks.json"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


def test_the_access_line_is_the_line_the_json_formatter_writes(logs: LogCapture) -> None:
    """Access lines skip logging's machinery (observability.write_access_line): what they say
    must not differ from what a LogRecord through the JSON handler and its filters says."""
    fields: dict[str, Any] = {
        "method": "GET",
        "path": "/api/v1/users/me",
        "route": "/api/v1/users/me",
        "status": 200,
        "duration_ms": 1.25,
        "ip": "203.0.113.9",
        "request_id": "line-1",
    }
    observability.write_access_line(logging.INFO, fields)
    observability.access_log.info("request", extra=fields)  # the same line, the long way

    fast, slow = (line.copy() for line in logs.lines())
    assert abs(_seconds(fast.pop("ts")) - _seconds(slow.pop("ts"))) < 1
    assert list(fast.items()) == list(slow.items())  # same fields, same order
    assert fast["logger"] == "oidc_server.access" and fast["level"] == "info"


def _seconds(ts: str) -> float:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts), ts
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_an_access_line_blanks_secrets_in_every_field_it_carries(
    logs: LogCapture, caplog: pytest.LogCaptureFixture
) -> None:
    refresh = _refresh_token()
    caplog.set_level(logging.INFO, logger="oidc_server.access")
    recorder = observability.RequestRecorder(f"GET{JWT}", f"/r/{JWT}", 404)
    recorder.record(0.001, f"/x/{refresh}/y", f"Bearer {JWT}", request_id=f"id-{refresh}")

    (line,) = [line for line in logs.lines() if line["logger"] == "oidc_server.access"]
    (record,) = [r for r in caplog.records if r.name == "oidc_server.access"]
    for written in (logs.text, caplog.text, repr(record.__dict__)):
        assert JWT not in written and refresh not in written
    assert line["path"] == "/x/[redacted]/y"
    assert line["status"] == 404 and record.status == 404  # a plain LogRecord for pytest's


def test_an_access_line_goes_only_where_its_level_is_taken(
    logs: LogCapture, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = observability.RequestRecorder("GET", "/health/live", 200)  # a DEBUG line
    recorder.record(0.001, "/health/live", "127.0.0.1", request_id="quiet-1")
    assert "quiet-1" not in logs.text
    assert not [r for r in caplog.records if getattr(r, "request_id", "") == "quiet-1"]

    logs.handler.setLevel(logging.WARNING)
    observability.RequestRecorder("GET", "/x", 200).record(0.001, "/x", "::1", "loud-1")
    assert "loud-1" not in logs.text  # this handler takes warnings only
    (taken,) = [r for r in caplog.records if getattr(r, "request_id", "") == "loud-1"]
    assert taken.levelno == logging.INFO  # pytest's handler, on the root logger, takes INFO


def test_an_access_line_that_cannot_be_written_fails_no_request(
    logs: LogCapture, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.stream.close()  # as a closed pipe would
    observability.RequestRecorder("GET", "/x", 200).record(0.001, "/x", "::1", "lost-1")
    assert "Logging error" in capsys.readouterr().err  # reported as logging reports it


def test_lines_the_app_writes_during_a_request_carry_its_id(
    client: FlaskClient, user: Any, logs: LogCapture
) -> None:
    refresh_token = password_login(client).get_json()["refresh_token"]
    form = {
        "grant_type": "refresh_token",
        "client_id": "cinema-app",
        "refresh_token": refresh_token,
    }
    assert client.post("/oauth/token", data=form).status_code == 200
    # Presenting the spent token again makes the grant log a warning of its own.
    reused = client.post("/oauth/token", data=form, headers={"X-Request-ID": "reuse-1"})
    assert reused.status_code == 400
    warnings = [e for e in logs.lines() if e["level"] == "warning"]
    assert warnings and all(e["request_id"] == "reuse-1" for e in warnings)
    assert any("reuse" in e["message"] for e in warnings)


def test_lines_outside_requests_have_no_request_id(logs: LogCapture) -> None:
    logging.getLogger("oidc_server.test").info("outside any request")
    (line,) = logs.lines()
    assert "request_id" not in line


def test_a_whole_sign_in_leaves_no_password_or_token_in_the_logs(
    client: FlaskClient, user: Any, logs: LogCapture
) -> None:
    tokens = password_login(client, scope="openid").get_json()
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    client.get("/oauth/userinfo", headers=bearer(access))
    client.get(f"/oauth/userinfo?access_token={access}")
    refreshed = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "client_id": "cinema-app", "refresh_token": refresh},
    ).get_json()
    client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh})
    client.post("/oauth/revoke", data={"token": refreshed["refresh_token"], "client_id": "x"})
    password_login(client, password="wrong password 1234")
    assert len(logs.lines()) >= 6  # the access lines at least: something was logged
    for secret in (PASSWORD, "wrong password 1234", access, refresh, refreshed["access_token"]):
        assert secret not in logs.text
    assert refreshed["refresh_token"] not in logs.text


# Redaction --------------------------------------------------------------------------------


def _refresh_token() -> str:
    return f"{secrets.token_urlsafe(16)}.{secrets.token_urlsafe(32)}"


@pytest.fixture
def redacting_logger() -> Iterator[tuple[logging.Logger, LogCapture]]:
    capture = LogCapture()
    logger = logging.getLogger("oidc_server.test.redaction")
    logger.addHandler(capture.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, capture
    logger.removeHandler(capture.handler)
    logger.propagate = True


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        (f"issued {JWT} to someone", JWT),
        ("issued {refresh} to someone", "{refresh}"),
        ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("GET /cb?code=Sg7Vd9qZ&state=1", "Sg7Vd9qZ"),
        ("form password=hunter2&username=a", "hunter2"),
        ("client_secret=s3cr3t-value and more", "s3cr3t-value"),
        ("POST /x?access_token=opaque-value", "opaque-value"),
    ],
)
def test_secrets_in_messages_are_redacted(
    redacting_logger: tuple[logging.Logger, LogCapture], message: str, secret: str
) -> None:
    logger, capture = redacting_logger
    if "{refresh}" in message:
        secret = _refresh_token()
        message = message.replace("{refresh}", secret)
    logger.info(message)
    (line,) = capture.lines()
    assert secret not in capture.text
    assert observability.REDACTED in line["message"]


def test_secrets_in_format_arguments_are_redacted(
    redacting_logger: tuple[logging.Logger, LogCapture],
) -> None:
    logger, capture = redacting_logger
    refresh = _refresh_token()
    logger.info("tokens %s and %s for %s", JWT, refresh, "viewer@example.com")
    (line,) = capture.lines()
    assert JWT not in capture.text and refresh not in capture.text
    assert line["message"].endswith("for viewer@example.com")


def test_sensitive_extra_fields_are_redacted_at_any_depth(
    redacting_logger: tuple[logging.Logger, LogCapture],
) -> None:
    logger, capture = redacting_logger
    logger.info(
        "request body",
        extra={
            "password": "hunter2",
            "form": {"client_secret": "s3cr3t", "items": [{"Refresh_Token": "r-t"}], "n": 3},
            "note": f"contains {JWT}",
            "user_id": "1234",
        },
    )
    (line,) = capture.lines()
    for secret in ("hunter2", "s3cr3t", "r-t", JWT):
        assert secret not in capture.text
    assert line["password"] == observability.REDACTED
    assert line["form"]["client_secret"] == observability.REDACTED
    assert line["form"]["items"][0]["Refresh_Token"] == observability.REDACTED
    assert line["form"]["n"] == 3
    assert line["user_id"] == "1234"


def test_tracebacks_are_redacted(redacting_logger: tuple[logging.Logger, LogCapture]) -> None:
    logger, capture = redacting_logger
    try:
        raise ValueError(f"could not parse {JWT}")
    except ValueError:
        logger.exception("failed")
    (line,) = capture.lines()
    assert JWT not in capture.text
    assert "ValueError: could not parse" in line["exc"]


def test_plain_values_are_left_alone(redacting_logger: tuple[logging.Logger, LogCapture]) -> None:
    logger, capture = redacting_logger
    kid = secrets.token_urlsafe(32)  # a key id is public and as long as a secret, but undotted
    message = f"rotated to {kid} in oidc_server.keys for user 42; grant_type=password"
    logger.info(message)
    (line,) = capture.lines()
    assert line["message"] == message


# Metrics ----------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_template_and_status(app: Flask) -> None:
    app.add_url_rule("/test-only/<int:n>", "test_only", lambda n: str(n))
    client = app.test_client()
    route = {"method": "GET", "route": "/test-only/<int:n>", "status": "200"}
    before = metric("http_requests_total", **route)
    timed = metric("http_request_duration_seconds_count", method="GET", route=route["route"])
    client.get("/test-only/7")
    client.get("/test-only/8")
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "http_requests_total", **route) == before + 2
    assert (
        sample(text, "http_request_duration_seconds_count", method="GET", route=route["route"])
        == timed + 2
    )
    assert "/test-only/7" not in text


def test_unmatched_paths_share_one_label(client: FlaskClient) -> None:
    labels = {"method": "GET", "route": observability.UNMATCHED_ROUTE, "status": "404"}
    before = metric("http_requests_total", **labels)
    client.get(f"/scanner/{secrets.token_hex(8)}")
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "http_requests_total", **labels) == before + 1
    assert "/scanner/" not in text


def test_the_metrics_endpoint_speaks_prometheus_text(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type == CONTENT_TYPE_LATEST
    assert response.headers["Cache-Control"] == "no-store"
    names = {family.name for family in text_string_to_metric_families(response.get_data(True))}
    assert {
        "http_requests",
        "http_request_duration_seconds",
        "oidc_refresh_token_reuse",
    } <= names


def test_event_counters(app: Flask) -> None:
    counts = {
        "issued": metric("oidc_tokens_issued_total", grant="client_credentials"),
        "other": metric("oidc_tokens_issued_total", grant="other"),
        "device": metric(
            "oidc_tokens_issued_total", grant="urn:ietf:params:oauth:grant-type:device_code"
        ),
        "login": metric("oidc_login_failures_total", method="password"),
        "google": metric("oidc_login_failures_total", method="google"),
        "limited": metric("oidc_rate_limited_total", route="/api/v1/auth/login"),
        "reuse": metric("oidc_refresh_token_reuse_total"),
    }
    observability.tokens_issued("client_credentials")
    observability.tokens_issued("Not A Label!")  # kept bounded, never echoed as a label
    observability.tokens_issued("urn:ietf:params:oauth:grant-type:device_code")
    observability.login_failed()
    observability.login_failed("google")
    observability.rate_limited("/api/v1/auth/login")
    observability.refresh_reuse_detected()
    observability.refresh_reuse_detected()
    assert metric("oidc_tokens_issued_total", grant="client_credentials") == counts["issued"] + 1
    assert metric("oidc_tokens_issued_total", grant="other") == counts["other"] + 1
    device = "urn:ietf:params:oauth:grant-type:device_code"
    assert metric("oidc_tokens_issued_total", grant=device) == counts["device"] + 1
    assert metric("oidc_login_failures_total", method="password") == counts["login"] + 1
    assert metric("oidc_login_failures_total", method="google") == counts["google"] + 1
    assert metric("oidc_rate_limited_total", route="/api/v1/auth/login") == counts["limited"] + 1
    assert metric("oidc_refresh_token_reuse_total") == counts["reuse"] + 2


def test_rate_limited_defaults_to_the_current_route(app: Flask) -> None:
    before = metric("oidc_rate_limited_total", route="/oauth/token")
    with app.test_request_context("/oauth/token", method="POST"):  # routed as a request is
        observability.rate_limited()
    assert metric("oidc_rate_limited_total", route="/oauth/token") == before + 1


_COUNT_IN_CHILD = """
import sys
from oidc_server import observability
for _ in range(int(sys.argv[1])):
    observability.tokens_issued("password")
"""

_SCRAPE_IN_CHILD = """
import sys
from oidc_server.app import create_app
from oidc_server.config import Settings
settings = Settings.from_env(
    {}, app_env="test", instance_dir=sys.argv[1], oidc_keys_dir=sys.argv[2],
    ratelimit_enabled=False,
)
print(create_app(settings).test_client().get("/metrics").get_data(as_text=True))
"""


def test_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    """What the server's workers do: each writes its own files, any of them serves the sum."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    for count in ("2", "3"):
        subprocess.run(
            [sys.executable, "-c", _COUNT_IN_CHILD, count], env=env, check=True, timeout=60
        )
    scraped = subprocess.run(
        [sys.executable, "-c", _SCRAPE_IN_CHILD, str(tmp_path / "i"), str(tmp_path / "k")],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    # The scraping process issued nothing itself: 5 can only be the other two's 2 + 3.
    assert sample(scraped, "oidc_tokens_issued_total", grant="password") == 5
    assert len(list(metrics_dir.glob("counter_*.db"))) >= 2


@pytest.mark.parametrize("level", ["warning", "WARNING", "Warning"])
def test_log_level_is_read_in_any_case(level: str) -> None:
    # LOG_LEVEL=info is how most deployments spell it, and granian's own option is lowercase.
    from oidc_server.logs import configure_logging

    root = logging.getLogger()
    before = root.level
    try:
        configure_logging(level)
        assert root.level == logging.WARNING
    finally:
        root.setLevel(before)


def _every_substitution(text: str) -> str:
    """``redact_text`` without its pre-check: each pattern substituted in turn."""
    for pattern in observability._SENSITIVE_TEXT:
        text = pattern.sub(observability.REDACTED, text)
    text = observability._AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {observability.REDACTED}", text)
    return observability._KEY_VALUE.sub(lambda m: f"{m.group(1)}={observability.REDACTED}", text)


_FRAGMENTS = st.sampled_from(
    [
        "eyJ",
        "eyj",
        "EYJ",
        ".",
        "=",
        "&",
        " ",
        "\t",
        "/",
        "Bearer",
        "bearer ",
        "BASIC ",
        "code",
        "client_secret",
        "Token",
        "password",
        "abcdEFGH",
        "0123456789",
        "_-",
        "x" * 16,
        "y" * 32,
        "é",
        "\u2028",
        "\x1c",
        "\xa0",
        "\u3000",
    ]
)


@given(st.lists(_FRAGMENTS | st.text(max_size=8), max_size=24).map("".join))
@settings(max_examples=400, deadline=None)
def test_the_pre_check_never_lets_through_what_the_substitutions_would_blank(text: str) -> None:
    assert observability.redact_text(text) == _every_substitution(text)


def test_the_plain_text_shortcut_passes_no_whitespace_the_patterns_match() -> None:
    # redact_text answers text without ".", "=" and whitespace at once; it tells whitespace by
    # str.isprintable(), which must be False for every character the patterns' \s matches.
    whitespace = [chr(point) for point in range(0x110000) if re.fullmatch(r"\s", chr(point))]
    assert " " in whitespace and "\u3000" in whitespace
    assert [c for c in whitespace if c != " " and c.isprintable()] == []
    for space in whitespace:
        assert observability.redact_text(f"Bearer{space}abc") == f"Bearer {observability.REDACTED}"


def test_a_recurring_field_is_redacted_the_same_whether_remembered_or_not() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    for text in (f"/x/{token}", "127.0.0.1", "/api/v1/users/me", f"/{'a' * 300}/{token}"):
        assert observability.redact_field(text) == observability.redact_text(text)
        assert observability.redact_field(text) == observability.redact_text(text)  # remembered
    assert token not in observability.redact_field(f"/{'a' * 300}/{token}")
