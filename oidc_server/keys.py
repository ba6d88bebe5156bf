"""RS256 signing keys kept as PEM files, shared by every worker through the keys folder.

Each key is ``<created_unix_ns>-<kid>.pem`` (mode 0600); ``kid`` is the RFC 7638 thumbprint.
The newest file is the current signing key. An older key is retired when the next one was
created and stays published in the JWKS until every token it signed has expired. Workers
notice a rotation by the folder's modification time, so no restart is needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

KEY_SIZE = 2048
#: How often a worker looks at the folder for a rotation done by another process.
RELOAD_INTERVAL = 1.0


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created_at: int
    key: RSAKey
    path: Path
    #: The same key as ``cryptography`` objects, for signing and verifying without joserfc.
    private: rsa.RSAPrivateKey
    public: rsa.RSAPublicKey

    def public_jwk(self) -> dict[str, Any]:
        jwk = self.key.as_dict(private=False)
        jwk.update(kid=self.kid, alg="RS256", use="sig")
        return jwk


@functools.lru_cache(maxsize=64)
def _load_cached(path: Path, mtime_ns: int) -> SigningKey:
    created_ns, _, kid = path.stem.partition("-")
    # The file is ours and written 0600, so cryptography's slow RSA consistency check
    # (tens of milliseconds per key, paid by every worker and app) is skipped.
    private = serialization.load_pem_private_key(
        path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return SigningKey(
        kid=kid,
        created_at=int(created_ns) // 10**9,
        key=RSAKey.import_key(private),
        path=path,
        private=private,
        public=private.public_key(),
    )


def _load(path: Path) -> SigningKey:
    return _load_cached(path, path.stat().st_mtime_ns)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_new_key(folder: Path, now: float | None = None) -> SigningKey:
    """Generate a key and move it into place atomically, readable by its owner only."""
    folder.mkdir(parents=True, exist_ok=True)
    created_ns = int((time.time() if now is None else now) * 10**9)
    # The newest file name must sort last even if two rotations share a clock reading.
    existing = [int(p.name.split("-", 1)[0]) for p in folder.glob("*.pem")]
    created_ns = max([created_ns, *(n + 1 for n in existing)])
    key = RSAKey.generate_key(KEY_SIZE, private=True)
    kid = key.thumbprint()
    final = folder / f"{created_ns:020d}-{kid}.pem"
    tmp = folder / f".{kid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.as_pem(private=True))
    os.replace(tmp, final)
    return _load(final)


class KeyRing:
    """The signing keys in ``folder``: the current one and those still published."""

    def __init__(
        self, folder: str | Path, max_token_lifetime: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.folder = Path(folder)
        self.max_token_lifetime = max_token_lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = []
        self._folder_mtime = -1
        self._checked_at = 0.0
        self._jwks: tuple[tuple[str, ...], dict[str, Any]] | None = None

    def ensure_key(self) -> None:
        """Create the first key if the folder has none (safe when workers race to do it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.folder):
            if not self._paths():
                write_new_key(self.folder, self._clock())
        self._reload(force=True)

    def rotate(self) -> SigningKey:
        """Make a new current key and delete keys no token can still need."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.folder):
            key = write_new_key(self.folder, self._clock())
            self._reload(force=True)
            for expired in self._expired():
                expired.path.unlink(missing_ok=True)
        self._reload(force=True)
        return key

    @property
    def current(self) -> SigningKey:
        keys = self._fresh_keys()
        if not keys:
            raise RuntimeError(f"no signing key in {self.folder}")
        return keys[-1]

    def published(self) -> list[SigningKey]:
        """The current key and retired keys whose tokens may not have expired yet, newest first."""
        keys = self._fresh_keys()
        expired = {k.kid for k in self._expired(keys)}
        return [k for k in reversed(keys) if k.kid not in expired]

    def find(self, kid: str) -> SigningKey | None:
        for key in self.published():
            if key.kid == kid:
                return key
        # Another worker may have rotated within the last reload interval; one stat of the
        # folder tells (a made-up kid costs no more than that).
        self._reload()
        for key in self.published():
            if key.kid == kid:
                return key
        return None

    def jwks(self) -> dict[str, Any]:
        """The published public keys; rebuilt only when that set changes (it is hot)."""
        published = self.published()
        kids = tuple(k.kid for k in published)
        if self._jwks is None or self._jwks[0] != kids:
            self._jwks = (kids, {"keys": [k.public_jwk() for k in published]})
        return self._jwks[1]

    def _expired(self, keys: list[SigningKey] | None = None) -> list[SigningKey]:
        keys = self._keys if keys is None else keys
        now = self._clock()
        # A key is retired when its successor was created; its tokens live at most
        # max_token_lifetime after that (plus a minute of clock skew).
        return [
            older
            for older, newer in itertools.pairwise(keys)
            if newer.created_at + self.max_token_lifetime + 60 < now
        ]

    def _paths(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("*.pem") if not p.name.startswith("."))

    def _fresh_keys(self) -> list[SigningKey]:
        if time.monotonic() - self._checked_at > RELOAD_INTERVAL:
            self._reload()
        return self._keys

    def _reload(self, force: bool = False) -> None:
        with self._lock:
            self._checked_at = time.monotonic()
            try:
                mtime = self.folder.stat().st_mtime_ns
            except FileNotFoundError:
                self._keys = []
                return
            if not force and mtime == self._folder_mtime:
                return
            self._folder_mtime = mtime
            self._keys = [_load(p) for p in self._paths()]
