"""Per-account backoff after failed logins: a slowdown for guessers, never a lockout.

After ``threshold`` failures within ``window`` seconds of each other, every further attempt
on that login must wait ``base_delay * 2 ** (failures - threshold)`` seconds (capped at
``max_delay``) before its password is even checked. A successful login clears the count.
An attacker can thus delay the owner by at most ``max_delay`` per guess, and cannot make the
account unusable for longer than they keep guessing; the per-IP and per-account rate limits
bound how fast they can do that.

Unknown logins are counted exactly like known ones, so a throttled answer says nothing
about whether an account exists. Counters are keyed by a digest of the normalised login,
so the store never holds email addresses.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from .accounts import AccountError, normalise_login
from .tokens.store import TokenStore


@dataclass(frozen=True)
class BackoffPolicy:
    threshold: int = 5
    base_delay: int = 1
    max_delay: int = 300
    window: int = 900

    def delay_after(self, failures: int) -> int:
        """Seconds to wait after ``failures`` consecutive failures (0 below the threshold)."""
        if self.threshold <= 0 or failures < self.threshold:
            return 0
        # Bounded exponent: 2 ** 40 seconds already exceeds any sensible cap.
        exponent = min(failures - self.threshold, 40)
        return min(self.max_delay, self.base_delay * 2**exponent)


def account_key(login: str) -> str:
    """The counter key of a login: a digest of its normalised form (or of the raw text)."""
    try:
        canonical = normalise_login(login)
    except AccountError:
        canonical = login.strip().lower()
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class LoginBackoff:
    """Asks the token store whether a login may be tried, and tells it how attempts ended."""

    def __init__(
        self,
        store: TokenStore,
        policy: BackoffPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    def wait_before_attempt(self, login: str) -> int:
        """Seconds to wait before ``login`` may be tried; 0 means try now (the slot is taken)."""
        return self.store.claim_login_attempt(account_key(login), int(self.clock()))

    def record_failure(self, login: str) -> int:
        """Count a failed attempt; returns the wait it imposes on the next one."""
        key = account_key(login)
        failures = self.store.record_login_failure(key, self.policy.window)
        delay = self.policy.delay_after(failures)
        if delay:
            now = int(self.clock())
            # The record must outlive the wait it carries, whatever the configured window.
            keep = max(self.policy.window, delay)
            self.store.hold_login_attempts(key, now + delay, delay, keep)
        return delay

    def record_success(self, login: str) -> None:
        """A correct password ends the backoff at once."""
        self.store.clear_login_failures(account_key(login))
