"""The domain part without HTTP: claims mappers, the registry, races and compensation."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from sqlalchemy import delete, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oidc_server.config import Settings
from oidc_server.models import LoginHistory, SocialAccount, User
from oidc_server.social import accounts as social_accounts
from oidc_server.social.claims import (
    ClaimsError,
    SocialIdentity,
    google_identity,
    yandex_identity,
)
from oidc_server.social.client import IdTokenInvalid
from oidc_server.social.providers import GOOGLE_ISSUER, enabled_providers

from ..support.fake_providers import GOOGLE_KID
from .conftest import NOTHING, counts

ORIGIN = social_accounts.SignInOrigin(client_id="cinema-app", user_agent="pytest", ip="127.0.0.1")
ALICE = SocialIdentity(subject="sub-1", email="alice@gmail.com")


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"sub": "1", "email": "A@Gmail.com", "email_verified": True}, ("1", "a@gmail.com")),
        ({"sub": "1", "email": "a@gmail.com", "email_verified": "true"}, ("1", "a@gmail.com")),
        ({"sub": "1", "email": "a@gmail.com", "email_verified": False}, ("1", None)),
        ({"sub": "1", "email": "a@gmail.com", "email_verified": "false"}, ("1", None)),
        ({"sub": "1", "email": "a@gmail.com"}, ("1", None)),
        ({"sub": "1", "email": "not an email", "email_verified": True}, ("1", None)),
    ],
)
def test_google_mapper_trusts_only_verified_email(claims, expected):
    identity = google_identity(claims)
    assert (identity.subject, identity.email) == expected


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"id": "1000034426", "default_email": "Bob@Yandex.ru"}, ("1000034426", "bob@yandex.ru")),
        ({"id": 1000034426, "default_email": "bob@yandex.ru"}, ("1000034426", "bob@yandex.ru")),
        ({"id": "7"}, ("7", None)),
    ],
)
def test_yandex_mapper(info, expected):
    identity = yandex_identity(info)
    assert (identity.subject, identity.email) == expected


@pytest.mark.parametrize(
    ("mapper", "claims"),
    [
        (google_identity, {"email": "a@gmail.com", "email_verified": True}),
        (google_identity, {"sub": ""}),
        (google_identity, {"sub": "x" * 256}),
        (yandex_identity, {"id": True, "default_email": "a@yandex.ru"}),
        (yandex_identity, {"id": None}),
        (yandex_identity, {"login": "alice"}),
    ],
)
def test_mappers_refuse_a_missing_subject(mapper, claims):
    with pytest.raises(ClaimsError):
        mapper(claims)


def test_a_provider_is_enabled_by_its_client_id():
    assert enabled_providers(Settings(secret_key="k" * 40)) == {}
    only_yandex = Settings(secret_key="k" * 40, yandex_client_id="y", yandex_userinfo_url="u")
    (spec,) = enabled_providers(only_yandex).values()
    assert (spec.name, spec.is_openid, spec.userinfo_url) == ("yandex", False, "u")
    google = enabled_providers(Settings(secret_key="k" * 40, google_client_id="g"))["google"]
    assert google.is_openid and google.metadata_url.startswith("https://accounts.google.com/")
    # Google documents both spellings of its issuer; no other issuer gets an alias.
    assert google.accepted_issuers(GOOGLE_ISSUER) == [GOOGLE_ISSUER, "accounts.google.com"]
    assert google.accepted_issuers("https://other.example") == ["https://other.example"]


def test_concurrent_first_sign_in_of_one_identity_finds_the_winner(services: Any):
    """Another request commits the same identity between our lookup and our insert."""

    def competitor_commits(session: Session, _ctx: Any, _instances: Any) -> None:
        with services.db.session() as other:
            user = User(login=ALICE.email, password_hash=None)
            other.add(user)
            other.flush()
            other.add(SocialAccount(user_id=user.id, provider="google", subject=ALICE.subject))

    with services.db.sessions() as session:
        event.listen(session, "before_flush", competitor_commits, once=True)
        result = social_accounts.sign_in(session, services.tokens, "google", ALICE, ORIGIN)
    assert result.created is False
    assert counts(services) == {"users": 1, "social_accounts": 1, "login_history": 1}
    with services.db.session() as session:
        assert session.scalars(select(User.id)).one() == result.user_id


def test_failed_commit_starts_no_session(services: Any):
    """The user vanishes before our history row commits: no new session may start."""
    with services.db.sessions() as session:
        first = social_accounts.sign_in(session, services.tokens, "google", ALICE, ORIGIN)
    (first_session,) = services.store.list_sessions(str(first.user_id))

    def user_deleted_meanwhile(session: Session, _ctx: Any, _instances: Any) -> None:
        with services.db.session() as other:
            other.execute(delete(LoginHistory))
            other.execute(delete(User).where(User.id == first.user_id))

    with services.db.sessions() as session:
        event.listen(session, "before_flush", user_deleted_meanwhile, once=True)
        with pytest.raises(IntegrityError):
            social_accounts.sign_in(session, services.tokens, "google", ALICE, ORIGIN)
    assert counts(services) == NOTHING
    # Only the first sign-in's session exists: the second never started, its commit failed.
    remaining = services.store.list_sessions(str(first.user_id))
    assert [s.sid for s in remaining] == [first_session.sid]


def signed_id_token(fake: Any, **claims: Any) -> str:
    """An ID token signed with the stand-in Google's own key, with the claims given."""
    now = int(time.time())
    body = {"iss": fake.google_issuer, "sub": "42", "iat": now, "exp": now + 600, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": GOOGLE_KID}, body, fake._key)


@pytest.mark.parametrize(
    ("aud", "azp", "accepted"),
    [
        ("google-client-id", None, True),
        (["google-client-id", "other"], "google-client-id", True),
        ("someone-else", None, False),
        # azp names us, so Authlib's azp check passes: only our aud check refuses this one.
        ("someone-else", "google-client-id", False),
        (["someone-else", "other"], None, False),
        (None, None, False),  # aud is essential
    ],
)
def test_id_token_audience_is_checked(app: Any, fake: Any, aud: Any, azp: Any, accepted: bool):
    client = app.extensions["social"].client("google")
    token = {"access_token": "ya29.x", "id_token": signed_id_token(fake, aud=aud, azp=azp)}
    if accepted:
        assert client._id_token_claims(token, nonce=None)["sub"] == "42"
    else:
        with pytest.raises(IdTokenInvalid):
            client._id_token_claims(token, nonce=None)


@pytest.mark.parametrize("missing", ["sub", "exp", "iat", "iss"])
def test_id_token_essential_claims(app: Any, fake: Any, missing: str):
    client = app.extensions["social"].client("google")
    id_token = signed_id_token(fake, aud="google-client-id", **{missing: None})
    with pytest.raises(IdTokenInvalid):
        client._id_token_claims({"access_token": "ya29.x", "id_token": id_token}, nonce=None)
