"""Signing keys: generated once, RFC 7638 kids, rotation, retirement, agreement across workers."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

from oidc_server.keys import KeyRing


class Clock:
    def __init__(self, now: float = 1_800_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rfc7638_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 §3.2 computed by hand: required members only, sorted, no whitespace."""
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_first_start_generates_one_private_key_readable_by_owner_only(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys", max_token_lifetime=900)
    ring.ensure_key()
    ring.ensure_key()  # a second worker starting finds it and makes no other
    pems = list((tmp_path / "keys").glob("*.pem"))
    assert len(pems) == 1
    assert stat.S_IMODE(pems[0].stat().st_mode) == 0o600


def test_jwks_publishes_public_parts_with_kid_alg_use(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, max_token_lifetime=900)
    ring.ensure_key()
    (jwk,) = ring.jwks()["keys"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    assert jwk["kid"] == rfc7638_thumbprint(jwk)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & jwk.keys()


def test_rotation_makes_a_new_current_key_and_keeps_the_old_published(tmp_path: Path) -> None:
    clock = Clock()
    ring = KeyRing(tmp_path, max_token_lifetime=900, clock=clock)
    ring.ensure_key()
    old = ring.current.kid
    clock.now += 10
    new = ring.rotate().kid
    assert new != old and ring.current.kid == new
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new, old]
    # Still within the last old token's lifetime after the rotation.
    clock.now += 900
    assert old in {k["kid"] for k in ring.jwks()["keys"]}
    # Once every token it signed has expired, the old key leaves the JWKS and the folder.
    clock.now += 61
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new]
    ring.rotate()
    assert len(list(tmp_path.glob("*.pem"))) == 2


def test_another_worker_sees_a_rotation_without_restart(tmp_path: Path, monkeypatch) -> None:
    import oidc_server.keys as keys_module

    monkeypatch.setattr(keys_module, "RELOAD_INTERVAL", 0.0)
    worker_a = KeyRing(tmp_path, max_token_lifetime=900)
    worker_b = KeyRing(tmp_path, max_token_lifetime=900)
    worker_a.ensure_key()
    worker_b.ensure_key()
    assert worker_a.current.kid == worker_b.current.kid
    rotated = KeyRing(tmp_path, max_token_lifetime=900).rotate()  # the CLI, another process
    assert worker_a.current.kid == worker_b.current.kid == rotated.kid


def test_a_kid_signed_by_another_worker_is_found_before_the_next_reload(tmp_path: Path) -> None:
    verifier = KeyRing(tmp_path, max_token_lifetime=900)
    verifier.ensure_key()
    assert verifier.current  # loaded; the next periodic reload is up to a second away
    rotated = KeyRing(tmp_path, max_token_lifetime=900).rotate()
    assert verifier.find(rotated.kid) is not None
    assert verifier.find("made-up") is None
