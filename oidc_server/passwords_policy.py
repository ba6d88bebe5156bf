"""The password policy of NIST SP 800-63B §5.1.1.2 (memorised secrets chosen by the user).

Length is counted in Unicode code points: at least ``MIN_LENGTH``, at most ``MAX_LENGTH``
(the bound exists so that no one makes us hash megabytes; it is checked before any hashing).
No composition rules, but a blocklist: the 10,000 most common passwords, and the account's
own login. Every printable character, spaces and Unicode included, is allowed.
"""

from __future__ import annotations

import functools
from importlib import resources

MIN_LENGTH = 8
MAX_LENGTH = 1024


class PasswordRejected(ValueError):
    """The password breaks the policy; ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@functools.cache
def common_passwords() -> frozenset[str]:
    """The blocklist, lowercased; lines starting with ``#`` are comments."""
    text = resources.files("oidc_server").joinpath("data/common-passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def check_password(password: str, login: str | None = None) -> None:
    """Raise ``PasswordRejected`` unless ``password`` may be chosen by the user ``login``."""
    if len(password) < MIN_LENGTH:
        raise PasswordRejected(
            "password_too_short", f"the password needs at least {MIN_LENGTH} characters"
        )
    if len(password) > MAX_LENGTH:
        raise PasswordRejected(
            "password_too_long", f"the password may have at most {MAX_LENGTH} characters"
        )
    # The list is lowercased, so "Password1" is as common as "password1".
    if password.lower() in common_passwords():
        raise PasswordRejected(
            "password_too_common", "this password is among the most commonly used ones"
        )
    if login and password.casefold() in _login_variants(login):
        raise PasswordRejected("password_is_login", "the password must not be the login")


def _login_variants(login: str) -> set[str]:
    """The login and its local part: the context-specific words of §5.1.1.2."""
    folded = login.casefold()
    local_part = folded.rpartition("@")[0]
    return {folded, local_part} - {""}
