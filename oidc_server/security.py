"""Password hashing (argon2id) and client secret hashing (keyed SHA-256)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

#: One argon2id computation at a time in this process. With ``parallelism`` 4 one already runs
#: on up to four threads; several at once on the same cores (a worker's request threads) only
#: share them, each 64 MiB block evicting the others' from the caches: with one at a time a
#: login cost 10 % less CPU, and logins rose from 86 % to 88-93 % of the rate at which as many
#: processes verify back to back (docs/scaling.md, session 15). A worker's memory for hashing
#: stays one block. Hashes and verifications alike, unknown logins included, so that both
#: wait in the same queue and an unknown login still takes as long as a wrong password.
_ONE_AT_A_TIME = threading.Lock()


class PasswordHasher:
    """argon2id hashing that tells callers when a stored hash needs rehashing."""

    def __init__(self, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._argon2 = _Argon2(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID
        )

    def hash(self, password: str) -> str:
        with _ONE_AT_A_TIME:
            return self._argon2.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Check ``password``; a missing hash still costs one verification.

        Without a stored hash (an unknown login) the password is hashed with our parameters
        and the result thrown away: the same argon2id work as verifying against a hash made
        with them, so an unknown login takes as long as a wrong password, and no hash has to be
        made in advance (a dummy hash made at start-up delayed every worker's first answer).
        """
        if not stored_hash:
            self.hash(password)
            return False
        try:
            with _ONE_AT_A_TIME:
                return self._argon2.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._argon2.check_needs_rehash(stored_hash)


def generate_client_secret() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_client_secret(secret_key: str, client_secret: str) -> str:
    """Client secrets are high-entropy and ours, so a keyed fast hash is enough (no argon2)."""
    return hmac.new(secret_key.encode(), client_secret.encode(), hashlib.sha256).hexdigest()


def check_client_secret(secret_key: str, client_secret: str, stored_hash: str | None) -> bool:
    if not stored_hash:
        return False
    return hmac.compare_digest(hash_client_secret(secret_key, client_secret), stored_hash)


def hash_token(token: str) -> str:
    """Refresh tokens are stored by this digest only; the token itself is 256 random bits."""
    return hashlib.sha256(token.encode()).hexdigest()
