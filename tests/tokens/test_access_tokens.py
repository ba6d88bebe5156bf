"""Access tokens are RFC 9068 JWTs; anything we did not sign, or that has expired, is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from oidc_server.keys import KeyRing
from oidc_server.models import User
from oidc_server.tokens.access_tokens import AccessTokenCodec

from ..conftest import MachineClient, bearer, password_login


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


@pytest.fixture
def codec(tmp_path: Any) -> AccessTokenCodec:
    ring = KeyRing(tmp_path, max_token_lifetime=900)
    ring.ensure_key()
    return AccessTokenCodec(ring, issuer="https://id.example", audience="cinema", ttl=900)


def test_issued_tokens_have_the_rfc9068_header_and_claims(codec: AccessTokenCodec) -> None:
    token, claims = codec.issue(
        subject="u1", client_id="app", scope="openid", session_id="s1", roles=["admin"]
    )
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"typ": "at+jwt", "alg": "RS256", "kid": codec.keyring.current.kid}
    assert codec.verify(token) == claims
    assert claims["exp"] - claims["iat"] == 900
    assert claims["roles"] == ["admin"] and claims["sid"] == "s1"


def forgeries(codec: AccessTokenCodec) -> dict[str, str]:
    good, claims = codec.issue(subject="u1", client_id="app", scope="openid")
    head, body, sig = good.split(".")
    kid = codec.keyring.current.kid
    public_pem = codec.keyring.current.key.as_pem(private=False)
    hs_header = segment({"typ": "at+jwt", "alg": "HS256", "kid": kid})
    hs_body = segment({**claims, "sub": "admin"})
    hs_sig = b64(hmac.new(public_pem, f"{hs_header}.{hs_body}".encode(), hashlib.sha256).digest())
    foreign = RSAKey.generate_key(2048, private=True)
    now = int(time.time())

    def signed(key: RSAKey, **changes: Any) -> str:
        header = {"typ": "at+jwt", "alg": "RS256", "kid": kid}
        return jwt.encode(header, {**claims, **changes}, key)

    our_key = codec.keyring.current.key
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # A 256-byte signature leaves 4 unused bits in its last character: flip one.
    respelt = sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1]
    standard = {"typ": "at+jwt", "alg": "RS256", "kid": kid}
    return {
        "crit header": _sign_raw(
            our_key, f"{segment({**standard, 'crit': ['ext'], 'ext': 1})}.{body}"
        ),
        "another header parameter": _sign_raw(
            our_key, f"{segment({**standard, 'jku': 'https://evil.example'})}.{body}"
        ),
        "signature spelt another way": f"{head}.{body}.{respelt}",
        "padded signature": f"{head}.{body}.{sig}==",
        "letters beyond ASCII in the payload": f"{head}.{body[:-1]}é.{sig}",
        "payload not an object": _sign_raw(our_key, f"{head}.{b64(b'[1,2]')}"),
        "alg none": f"{segment({'typ': 'at+jwt', 'alg': 'none', 'kid': kid})}.{body}.",
        "HS256 keyed with our public key": f"{hs_header}.{hs_body}.{hs_sig}",
        "tampered payload": f"{head}.{segment({**claims, 'scope': 'roles:write'})}.{sig}",
        "foreign key with our kid": signed(foreign),
        "expired": signed(our_key, iat=now - 2000, exp=now - 1000),
        "wrong issuer": signed(our_key, iss="https://evil.example"),
        "wrong audience": signed(our_key, aud="another-api"),
        "plain JWT typ": jwt.encode({"alg": "RS256", "kid": kid}, claims, our_key),
        "unknown kid": jwt.encode(
            {"typ": "at+jwt", "alg": "RS256", "kid": "nope"}, claims, our_key
        ),
        "garbage": "not.a.jwt",
        "random bytes": b64(b"\x00\xff" * 20) + "." + b64(b"\x01") + "." + b64(b"\x02"),
        "truncated": good[:-10],
        "empty": "",
    }


def _sign_raw(key: RSAKey, signing_input: str) -> str:
    private = key.get_op_key("sign")
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def test_the_same_token_signed_by_joserfc_verifies(codec: AccessTokenCodec) -> None:
    # Tokens issued before signing moved to cryptography (and by other JOSE libraries).
    _, claims = codec.issue(subject="u1", client_id="app", scope="openid")
    key = codec.keyring.current
    token = jwt.encode({"typ": "at+jwt", "alg": "RS256", "kid": key.kid}, claims, key.key)
    assert codec.verify(token) == claims


def test_forged_tokens_are_refused_by_the_codec(codec: AccessTokenCodec) -> None:
    for name, token in forgeries(codec).items():
        assert codec.verify(token) is None, name


def test_forged_tokens_are_refused_by_the_resource_protector_and_introspection(
    client: FlaskClient, services: Any, user: User, machine: MachineClient
) -> None:
    assert password_login(client).status_code == 200
    for name, token in forgeries(services.tokens.codec).items():
        response = client.get("/oauth/userinfo", headers=bearer(token))
        assert response.status_code == 401, name
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], name
        if not token:
            continue  # an empty token parameter is a malformed request (400), tested elsewhere
        introspected = client.post(
            "/oauth/introspect", data={"token": token}, headers=machine.basic
        )
        assert introspected.status_code == 200 and introspected.json == {"active": False}, name


# Verified tokens remembered --------------------------------------------------------------


def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the signatures the codec decodes, which it does only to check them."""
    from oidc_server.tokens import access_tokens

    checked: list[str] = []
    decode = access_tokens._decode_segment

    def counting(segment: str) -> bytes | None:
        checked.append(segment)
        return decode(segment)

    monkeypatch.setattr(access_tokens, "_decode_segment", counting)
    return checked


def test_a_token_verified_once_is_not_checked_again_but_its_claims_are_copies(
    codec: AccessTokenCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _ = codec.issue(subject="svc", client_id="svc", scope="roles:read")
    checked = signature_checks(monkeypatch)
    first = codec.verify(token)
    assert first is not None and len(checked) == 3  # header, claims, signature
    first["scope"] = "changed by a caller"

    again = codec.verify(token)

    assert again is not None and again["scope"] == "roles:read"
    assert len(checked) == 3


def test_a_remembered_token_still_expires(tmp_path: Any) -> None:
    now = [1_800_000_000.0]
    ring = KeyRing(tmp_path, max_token_lifetime=900, clock=lambda: now[0])
    ring.ensure_key()
    codec = AccessTokenCodec(ring, "https://id.example", "cinema", ttl=900, clock=lambda: now[0])
    token, _ = codec.issue(subject="svc", client_id="svc", scope="roles:read")
    assert codec.verify(token) is not None

    now[0] += 901

    assert codec.verify(token) is None


def test_a_remembered_token_whose_key_was_removed_is_refused(
    codec: AccessTokenCodec, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _ = codec.issue(subject="svc", client_id="svc", scope="roles:read")
    assert codec.verify(token) is not None
    codec.keyring.rotate()
    monkeypatch.setattr("oidc_server.keys.RELOAD_INTERVAL", -1)  # every look reads the folder
    [old] = [p for p in tmp_path.glob("*.pem") if codec.keyring.current.kid not in p.name]

    assert codec.verify(token) is not None  # rotated: still published, still verified
    old.unlink()

    assert codec.verify(token) is None


def test_only_so_many_tokens_are_remembered(
    codec: AccessTokenCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oidc_server.tokens import access_tokens

    monkeypatch.setattr(access_tokens, "VERIFIED_TOKENS", 2)
    tokens = [codec.issue(subject=f"s{n}", client_id="c", scope="")[0] for n in range(3)]
    for token in tokens:
        assert codec.verify(token) is not None
    checked = signature_checks(monkeypatch)

    assert codec.verify(tokens[2]) is not None and checked == []  # among the last two
    assert codec.verify(tokens[0]) is not None and len(checked) == 3  # forgotten: checked
