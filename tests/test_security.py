"""Password hashing: what a login's cost and outcome depend on."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from oidc_server.security import PasswordHasher

CHEAP = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher(**CHEAP)


def argon2_calls(hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each argon2id computation (a hash or a verification) the hasher makes."""
    calls: list[str] = []
    argon2_class = type(hasher._argon2)  # its instances have slots: patch the class
    for name in ("hash", "verify"):
        real = getattr(argon2_class, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(argon2_class, name, spy)
    return calls


def test_the_right_password_verifies_and_a_wrong_one_does_not(hasher: PasswordHasher) -> None:
    stored = hasher.hash("correct horse")
    assert stored.startswith("$argon2id$")
    assert hasher.verify(stored, "correct horse") is True
    assert hasher.verify(stored, "correct horsE") is False


def test_an_unknown_login_costs_one_argon2_computation_like_a_wrong_password(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = hasher.hash("correct horse")
    calls = argon2_calls(hasher, monkeypatch)
    assert hasher.verify(None, "correct horse") is False
    assert calls == ["hash"]
    calls.clear()
    assert hasher.verify(stored, "wrong") is False
    assert calls == ["verify"]


def test_building_a_hasher_computes_no_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker builds one at start: a hash there would delay its first answer."""
    import argon2

    def refuse(*_: Any, **__: Any) -> str:
        raise AssertionError("hashed at construction")

    monkeypatch.setattr(argon2.PasswordHasher, "hash", refuse)
    PasswordHasher(**CHEAP)


def test_a_malformed_stored_hash_is_a_failed_login_not_an_error(hasher: PasswordHasher) -> None:
    assert hasher.verify("not a hash", "anything") is False
    assert hasher.verify("$argon2id$v=19$m=1024,t=1,p=1$broken", "anything") is False


def test_a_hash_made_with_other_parameters_needs_rehashing(hasher: PasswordHasher) -> None:
    older = PasswordHasher(time_cost=1, memory_cost=2048, parallelism=1).hash("pw")
    assert hasher.needs_rehash(older) is True
    assert hasher.needs_rehash(hasher.hash("pw")) is False


@pytest.mark.parametrize(
    "compute",
    [
        lambda hasher, stored: hasher.verify(stored, "correct horse"),
        lambda hasher, stored: hasher.verify(stored, "wrong horse"),
        lambda hasher, stored: hasher.verify(None, "an unknown login's password"),
        lambda hasher, stored: hasher.hash("a new password"),
    ],
    ids=["right password", "wrong password", "unknown login", "new hash"],
)
def test_a_process_computes_one_argon2_hash_at_a_time(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch, compute: Any
) -> None:
    stored = hasher.hash("correct horse")
    running, most = [0], [0]
    counting = threading.Lock()  # so that no two threads' counts can interleave
    argon2_class = type(hasher._argon2)
    for name in ("hash", "verify"):
        real = getattr(argon2_class, name)

        def counted(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            with counting:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.01)  # long enough for the other threads to arrive meanwhile
            try:
                return _real(*args, **kwargs)
            finally:
                with counting:
                    running[0] -= 1

        monkeypatch.setattr(argon2_class, name, counted)
    others = PasswordHasher(**CHEAP)  # another app's hasher in the same process
    threads = [
        threading.Thread(target=compute, args=(each, stored))
        for each in (hasher, others, hasher, others)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == [1]
