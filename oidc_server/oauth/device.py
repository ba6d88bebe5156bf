"""The device authorization grant (RFC 8628) for TV apps.

A TV asks ``/oauth/device_authorization`` for a device code (its secret, which it polls the
token endpoint with) and a short user code the person types in at ``/activate``. Everything
lives in the token store, keyed by digests, for ``DEVICE_CODE_TTL`` seconds:

- the device record (client, scope, user code, expiry), read on every poll;
- the user code, taken once when the person approves or denies;
- the person's decision, taken once by the poll that answers with tokens (or access_denied);
- the last poll's time and interval, for ``slow_down`` (§3.5: +5 s each time).

User codes are 8 letters from an alphabet without vowels or look-alikes (§6.1), shown as
``ABCD-EFGH``: 20^8 ≈ 2.6·10^10 codes, of which a few thousand are live at once, and entering
one needs a signed-in person and is rate limited per IP, so guessing one is hopeless.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc8628 import DeviceCodeGrant as _DeviceCodeGrant
from authlib.oauth2.rfc8628.errors import (
    AuthorizationPendingError,
    ExpiredTokenError,
    SlowDownError,
)

from .. import accounts, observability
from ..context import client_ip, db_session, services, user_agent
from ..history import record_then_start
from ..security import hash_token
from ..tokens.service import LoginContext
from ..tokens.store import TokenStore
from .grants import single_valued

#: RFC 8628 §6.1: consonants only, no vowels (no words) and nothing that looks like a digit.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
DEVICE_CODE_TTL = 600
#: Seconds an expired device code is still recognised, to answer expired_token, not invalid.
EXPIRED_GRACE = 600
INTERVAL = 5
SLOW_DOWN_STEP = 5

DEVICE_NS = "device_code"
USER_CODE_NS = "device_user_code"
DECISION_NS = "device_decision"
POLL_NS = "device_poll"


def normalise_user_code(text: str) -> str:
    """What a person typed, as we store it: letters of our alphabet only, upper case."""
    letters = "".join(ch for ch in text.upper()[:64] if ch.isalpha())
    return letters if all(ch in USER_CODE_ALPHABET for ch in letters) else ""


def display_user_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


class PollOutcome(enum.Enum):
    APPROVED = "approved"
    DENIED = "denied"
    PENDING = "authorization_pending"
    SLOW_DOWN = "slow_down"
    EXPIRED = "expired_token"
    INVALID = "invalid_grant"


@dataclass(frozen=True)
class PollResult:
    outcome: PollOutcome
    record: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None


class DeviceFlow:
    """Device codes, user codes, decisions and polling, on the token store."""

    def __init__(self, store: TokenStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def start(self, client_id: str, scope: str, verification_uri: str) -> dict[str, Any]:
        """RFC 8628 §3.2: a new device code and user code for ``client_id``."""
        device_code = secrets.token_urlsafe(32)
        user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
        key = hash_token(device_code)
        now = self.clock()
        record = {
            "client_id": client_id,
            "scope": scope,
            "user_code": user_code,
            "expires_at": now + DEVICE_CODE_TTL,
        }
        self.store.put_once(DEVICE_NS, key, record, DEVICE_CODE_TTL + EXPIRED_GRACE)
        self.store.put_once(USER_CODE_NS, user_code, {"device": key, **record}, DEVICE_CODE_TTL)
        return {
            "device_code": device_code,
            "user_code": display_user_code(user_code),
            "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?user_code={user_code}",
            "expires_in": DEVICE_CODE_TTL,
            "interval": INTERVAL,
        }

    def pending_request(self, user_code: str) -> dict[str, Any] | None:
        """The live request a typed user code stands for, or None."""
        code = normalise_user_code(user_code)
        if len(code) != USER_CODE_LENGTH:
            return None
        found = self.store.peek_once(USER_CODE_NS, code)
        if found is None or found["expires_at"] <= self.clock():
            return None
        return found

    def decide(
        self, user_code: str, *, approved: bool, user_id: str, auth_time: int, auth_method: str
    ) -> bool:
        """Record the person's answer; False if the code was used or expired meanwhile."""
        code = normalise_user_code(user_code)
        found = self.store.take_once(USER_CODE_NS, code) if code else None
        remaining = int(found["expires_at"] - self.clock()) if found else 0
        if found is None or remaining <= 0:
            return False
        decision = {
            "approved": approved,
            "user_id": user_id,
            "auth_time": auth_time,
            "auth_method": auth_method,
        }
        self.store.put_once(DECISION_NS, found["device"], decision, remaining)
        return True

    def poll(self, device_code: str, client_id: str) -> PollResult:
        """RFC 8628 §3.5: what the token endpoint answers this poll."""
        key = hash_token(device_code)
        record = self.store.peek_once(DEVICE_NS, key)
        if record is None or record["client_id"] != client_id:
            return PollResult(PollOutcome.INVALID)
        now = self.clock()
        if record["expires_at"] <= now:
            return PollResult(PollOutcome.EXPIRED)
        decision = self.store.take_once(DECISION_NS, key)
        if decision is not None:
            self.store.take_once(DEVICE_NS, key)  # §3.5: a device code gives tokens once
            self.store.take_once(POLL_NS, key)
            outcome = PollOutcome.APPROVED if decision["approved"] else PollOutcome.DENIED
            return PollResult(outcome, record, decision)
        last = self.store.take_once(POLL_NS, key)
        interval = int(last["interval"]) if last else INTERVAL
        too_fast = last is not None and now - float(last["at"]) < interval
        if too_fast:
            interval += SLOW_DOWN_STEP  # "for this and all subsequent requests"
        remaining = max(1, int(record["expires_at"] - now))
        self.store.put_once(POLL_NS, key, {"at": now, "interval": interval}, remaining)
        return PollResult(PollOutcome.SLOW_DOWN if too_fast else PollOutcome.PENDING, record)


def device_flow() -> DeviceFlow:
    from flask import current_app

    return current_app.extensions["device_flow"]


class DeviceCodeGrant(_DeviceCodeGrant):
    """RFC 8628 §3.4-3.5 at the token endpoint; TV apps are public clients (``none``)."""

    def validate_token_request(self) -> None:
        single_valued(self.request, "device_code")
        device_code = self.request.form.get("device_code")
        if not device_code:
            raise InvalidRequestError("Missing 'device_code' in request.")
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(
                f"The client is not authorized to use 'grant_type={self.GRANT_TYPE}'"
            )
        result = device_flow().poll(device_code[:256], client.get_client_id())
        if result.outcome is PollOutcome.INVALID:
            raise InvalidGrantError("The device code is invalid or was already used.")
        if result.outcome is PollOutcome.EXPIRED:
            raise ExpiredTokenError()
        if result.outcome is PollOutcome.SLOW_DOWN:
            raise SlowDownError()
        if result.outcome is PollOutcome.PENDING:
            raise AuthorizationPendingError()
        if result.outcome is PollOutcome.DENIED:
            raise AccessDeniedError()
        assert result.record is not None and result.decision is not None
        user = accounts.get_user(db_session(), result.decision["user_id"])
        if user is None or not user.is_active:
            raise AccessDeniedError()
        self.request.client = client
        self.request.user = user
        self.request.credential = result

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """The TV's own session (its own device in the sessions list), and an ID token."""
        from .authorization_code import id_token_issuer

        session = db_session()
        user = self.request.user
        result: PollResult = self.request.credential
        assert result.record is not None and result.decision is not None
        scope = result.record["scope"]
        roles = accounts.role_names(session, user.id)
        login = LoginContext(
            user_id=str(user.id),
            client_id=self.request.client.client_id,
            scope=scope,
            roles=roles,
            auth_method="device",
            user_agent=user_agent(),
            ip=client_ip(),
        )
        # History first, then the session (see record_then_start).
        token, record = record_then_start(
            session,
            lambda sid: services().tokens.start_session(login, sid=sid),
            user_id=user.id,
            method="device",
            user_agent=login.user_agent,
            ip=login.ip,
        )
        if not self.request.client.check_grant_type("refresh_token"):
            token.pop("refresh_token", None)
        if "openid" in scope.split():
            token["id_token"] = id_token_issuer().issue(
                user=user,
                client_id=self.request.client.client_id,
                scope=scope,
                roles=roles,
                sid=record.sid,
                auth_time=int(result.decision["auth_time"]),
                auth_method=result.decision["auth_method"],
                access_token=token["access_token"],
            )
        observability.tokens_issued(self.GRANT_TYPE)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def check_device_scope(client: Any, scope: str | None) -> str:
    if not client.allows_scope(scope):
        raise InvalidScopeError("The requested scope is not allowed for this client.")
    return str(client.get_allowed_scope(scope))
