"""Tests of the stand-in providers themselves, over real HTTP with requests and joserfc."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, InvalidClaimError
from joserfc.jwk import KeySet

from .fake_providers import GOOGLE_KID, FakeProviders

CALLBACK = "https://rp.example/callback?from=test"
GOOGLE = ("google-client-id", "google-secret")
YANDEX = ("yandex-client-id", "yandex-secret")


@pytest.fixture
def fp():
    with FakeProviders() as providers:
        yield providers


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def metadata(fp: FakeProviders) -> dict:
    return requests.get(fp.google_metadata_url, timeout=5).json()


def authorize(url: str, **params: str) -> dict[str, str]:
    """Follow the authorize step as a browser would; return the callback's query parameters."""
    resp = requests.get(url, params=params, allow_redirects=False, timeout=5)
    assert resp.status_code == 302, resp.text
    location = resp.headers["Location"]
    assert location.startswith("https://rp.example/callback?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def google_code(fp: FakeProviders, **extra: str) -> dict[str, str]:
    params = {
        "client_id": GOOGLE[0],
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": "openid email profile",
        "state": "st-1",
        **extra,
    }
    return authorize(metadata(fp)["authorization_endpoint"], **params)


def token(url: str, code: str, *, auth=GOOGLE, basic=True, **extra: str) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, **extra}
    if basic:
        return requests.post(url, data=data, auth=auth, timeout=5)
    return requests.post(
        url, data={**data, "client_id": auth[0], "client_secret": auth[1]}, timeout=5
    )


def verify_id_token(fp: FakeProviders, id_token: str, nonce: str | None = None) -> dict:
    meta = metadata(fp)
    keys = KeySet.import_key_set(requests.get(meta["jwks_uri"], timeout=5).json())
    decoded = jwt.decode(id_token, keys, algorithms=meta["id_token_signing_alg_values_supported"])
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": meta["issuer"]},
        aud={"essential": True, "value": GOOGLE[0]},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        **({"nonce": {"essential": True, "value": nonce}} if nonce else {}),
    )
    registry.validate(decoded.claims)
    assert decoded.header["kid"] == GOOGLE_KID
    return decoded.claims


def test_discovery_and_jwks(fp):
    meta = metadata(fp)
    assert meta["issuer"] == f"{fp.base_url}/google"
    assert fp.google_metadata_url == f"{meta['issuer']}/.well-known/openid-configuration"
    for field in (
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "scopes_supported",
        "claims_supported",
    ):
        assert meta[field]
    assert meta["id_token_signing_alg_values_supported"] == ["RS256"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {
        "client_secret_post",
        "client_secret_basic",
    }
    assert set(meta["code_challenge_methods_supported"]) == {"plain", "S256"}
    (key,) = requests.get(meta["jwks_uri"], timeout=5).json()["keys"]
    assert key["kty"] == "RSA" and key["kid"] == GOOGLE_KID and "d" not in key


def test_google_full_flow_with_pkce_and_nonce(fp):
    verifier, challenge = pkce_pair()
    cb = google_code(fp, nonce="n-0S6", code_challenge=challenge, code_challenge_method="S256")
    assert cb["state"] == "st-1" and cb["code"].startswith("4/")
    resp = token(metadata(fp)["token_endpoint"], cb["code"], code_verifier=verifier)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599
    assert body["scope"] == "openid email profile"
    assert resp.headers["Cache-Control"] == "no-store"
    claims = verify_id_token(fp, body["id_token"], nonce="n-0S6")
    assert claims["sub"] == fp.identity["google"]["sub"]
    assert claims["email"] == "alice@gmail.com" and claims["email_verified"] is True
    assert claims["exp"] - claims["iat"] == 3600
    digest = hashlib.sha256(body["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    info = requests.get(
        metadata(fp)["userinfo_endpoint"],
        timeout=5,
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert info.json() == fp.identity["google"]
    sent = [r for r in fp.requests_log if r["path"] == "/google/token"][-1]
    assert sent["form"]["code_verifier"] == verifier
    assert sent["headers"]["Authorization"].startswith("Basic ")


def test_identity_is_captured_at_authorize_time(fp):
    fp.identity["google"] = {
        "sub": "42",
        "email": "bob@gmail.com",
        "email_verified": False,
        "name": "Bob",
    }
    code = google_code(fp)["code"]
    fp.identity["google"]["email"] = "changed@gmail.com"
    body = token(metadata(fp)["token_endpoint"], code, basic=False).json()
    claims = verify_id_token(fp, body["id_token"])
    assert (claims["sub"], claims["email"], claims["email_verified"]) == (
        "42",
        "bob@gmail.com",
        False,
    )


def test_client_authentication(fp):
    url = metadata(fp)["token_endpoint"]
    for basic in (True, False):
        resp = token(url, google_code(fp)["code"], auth=(GOOGLE[0], "wrong"), basic=basic)
        assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    both = requests.post(
        url,
        auth=GOOGLE,
        timeout=5,
        data={
            "grant_type": "authorization_code",
            "code": google_code(fp)["code"],
            "redirect_uri": CALLBACK,
            "client_secret": GOOGLE[1],
        },
    )
    assert both.status_code == 400 and both.json()["error"] == "invalid_request"
    fp.clients["google"] = ("id with:colon", "s3cr&t")  # Basic credentials are form-encoded
    code = fp.issue_code("google", redirect_uri=CALLBACK)
    assert token(url, code, auth=("id+with%3Acolon", "s3cr%26t")).status_code == 200


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("reuse", "invalid_grant"),
        ("other_client", "invalid_grant"),
        ("other_redirect", "invalid_grant"),
        ("expire_codes", "invalid_grant"),
        ("ttl", "invalid_grant"),
        ("grant_type", "unsupported_grant_type"),
        ("other_provider", "invalid_grant"),
    ],
)
def test_code_rules(fp, case, expected):
    url = metadata(fp)["token_endpoint"]
    code = fp.issue_code(
        "google",
        redirect_uri=CALLBACK,
        client_id="someone-else" if case == "other_client" else None,
    )
    extra = {"redirect_uri": "https://rp.example/other"} if case == "other_redirect" else {}
    if case == "reuse":
        first = token(url, code).json()["access_token"]
    if case == "expire_codes":
        fp.faults.add("expire_codes")
    if case == "ttl":
        fp.code_ttl = -1
    if case == "grant_type":
        extra = {"grant_type": "client_credentials"}
    if case == "other_provider":
        url = fp.yandex_token_url
    resp = token(url, code, auth=YANDEX if case == "other_provider" else GOOGLE, **extra)
    assert resp.status_code == 400 and resp.json()["error"] == expected
    assert resp.headers["Content-Type"].startswith("application/json")
    if case == "reuse":  # RFC 6749 §4.1.2: tokens issued from a reused code are revoked
        userinfo = metadata(fp)["userinfo_endpoint"]
        auth = {"Authorization": f"Bearer {first}"}
        assert requests.get(userinfo, headers=auth, timeout=5).status_code == 401


def test_pkce_rules(fp):
    url = metadata(fp)["token_endpoint"]
    verifier, challenge = pkce_pair()
    plain = fp.issue_code("google", redirect_uri=CALLBACK, code_challenge=verifier)
    assert token(url, plain, code_verifier=verifier).status_code == 200
    cases = [
        (challenge, None),
        (challenge, pkce_pair()[0]),
        (None, verifier),
        (challenge, challenge),
    ]
    for code_challenge, code_verifier in cases:
        code = fp.issue_code(
            "google",
            redirect_uri=CALLBACK,
            code_challenge=code_challenge,
            code_challenge_method="S256" if code_challenge else None,
        )
        extra = {"code_verifier": code_verifier} if code_verifier else {}
        resp = token(url, code, **extra)
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant", resp.text


def test_authorize_errors(fp):
    url = metadata(fp)["authorization_endpoint"]
    base = {
        "client_id": GOOGLE[0],
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": "openid",
        "state": "xyz",
    }
    unknown = requests.get(
        url, params={**base, "client_id": "nope"}, allow_redirects=False, timeout=5
    )
    assert unknown.status_code == 401 and "Location" not in unknown.headers
    no_redirect = {k: v for k, v in base.items() if k != "redirect_uri"}
    missing = requests.get(url, params=no_redirect, allow_redirects=False, timeout=5)
    assert missing.status_code == 400 and "Location" not in missing.headers
    bad_type = authorize(url, **{**base, "response_type": "token"})
    assert bad_type == {"from": "test", "error": "unsupported_response_type", "state": "xyz"}
    bad_method = authorize(url, **base, code_challenge=pkce_pair()[1], code_challenge_method="S512")
    assert bad_method["error"] == "invalid_request"
    fp.faults.add("deny")
    assert authorize(url, **base) == {"from": "test", "error": "access_denied", "state": "xyz"}


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("id_token_wrong_aud", InvalidClaimError),
        ("id_token_wrong_nonce", InvalidClaimError),
        ("id_token_wrong_iss", InvalidClaimError),
        ("id_token_expired", ExpiredTokenError),
        ("id_token_bad_signature", BadSignatureError),
    ],
)
def test_id_token_faults(fp, fault, error):
    fp.faults.add(fault)
    code = google_code(fp, nonce="n-1")["code"]
    body = token(metadata(fp)["token_endpoint"], code).json()
    with pytest.raises(error):
        verify_id_token(fp, body["id_token"], nonce="n-1")


def test_yandex_full_flow(fp):
    verifier, challenge = pkce_pair()
    cb = authorize(
        fp.yandex_authorize_url,
        client_id=YANDEX[0],
        redirect_uri=CALLBACK,
        response_type="code",
        state="ya",
        code_challenge=challenge,
        code_challenge_method="S256",
    )
    assert cb["state"] == "ya"
    resp = token(fp.yandex_token_url, cb["code"], auth=YANDEX, basic=False, code_verifier=verifier)
    body = resp.json()
    assert resp.status_code == 200 and body["token_type"] == "bearer"
    assert body["refresh_token"] and body["expires_in"] > 0 and "id_token" not in body
    for scheme, params in (("OAuth", {"format": "json"}), ("Bearer", {})):
        info = requests.get(
            fp.yandex_userinfo_url,
            params=params,
            timeout=5,
            headers={"Authorization": f"{scheme} {body['access_token']}"},
        )
        assert info.status_code == 200
        data = info.json()
        assert data["client_id"] == YANDEX[0] and data["psuid"]
        assert {k: data[k] for k in fp.identity["yandex"]} == fp.identity["yandex"]
    bad = requests.get(fp.yandex_userinfo_url, headers={"Authorization": "OAuth nope"}, timeout=5)
    assert bad.status_code == 401
    wrong_code = token(fp.yandex_token_url, cb["code"], auth=YANDEX)
    assert wrong_code.json()["error"] == "invalid_grant"


def test_tokens_do_not_cross_providers(fp):
    code = fp.issue_code("google", redirect_uri=CALLBACK)
    google_token = token(metadata(fp)["token_endpoint"], code).json()["access_token"]
    resp = requests.get(
        fp.yandex_userinfo_url, timeout=5, headers={"Authorization": f"OAuth {google_token}"}
    )
    assert resp.status_code == 401


def test_transport_faults(fp):
    code = fp.issue_code("yandex", redirect_uri=CALLBACK)
    fp.faults.add("token_500")
    resp = token(fp.yandex_token_url, code, auth=YANDEX)
    assert resp.status_code == 500 and resp.headers["Content-Type"].startswith("text/html")
    fp.faults = {"token_garbage"}
    resp = token(fp.yandex_token_url, code, auth=YANDEX)
    assert resp.status_code == 200
    with pytest.raises(requests.JSONDecodeError):
        resp.json()
    fp.faults = {"userinfo_500"}
    assert requests.get(fp.yandex_userinfo_url, timeout=5).status_code == 500
    fp.faults = {"google:down"}  # provider-prefixed knob: Yandex keeps working
    assert requests.get(fp.google_metadata_url, timeout=5).status_code == 503
    assert token(fp.yandex_token_url, code, auth=YANDEX).status_code == 200
    fp.faults = {"down"}
    assert requests.get(fp.yandex_userinfo_url, timeout=5).status_code == 503


def test_dead_url_and_stop():
    with pytest.raises(requests.ConnectionError):
        requests.get(FakeProviders.dead_url(), timeout=5)
    fp = FakeProviders().start()
    url = fp.google_metadata_url
    assert requests.get(url, timeout=5).status_code == 200
    fp.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)
    with pytest.raises(RuntimeError):
        _ = fp.base_url
