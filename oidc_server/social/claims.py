"""Claims mappers: what a provider says about the person, reduced to what we rely on.

Only a stable subject and a verified email leave this module. An address the provider does
not vouch for is dropped here, so nothing further on can trust it by mistake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..accounts import AccountError, normalise_login

#: SocialAccount.subject is a String(255).
MAX_SUBJECT_LENGTH = 255


class ClaimsError(ValueError):
    """The provider's answer lacks a usable stable identifier."""


@dataclass(frozen=True)
class SocialIdentity:
    """Who signed in at the provider: its stable subject and, when verified, an email."""

    subject: str
    #: Normalised like our logins; None when absent, invalid or not verified by the provider.
    email: str | None


def _subject(value: Any) -> str:
    # Yandex's id is documented as a string but numeric ids are seen in the wild; bool is an int.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_SUBJECT_LENGTH:
        raise ClaimsError("the provider did not name a usable subject")
    return value


def _email(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return normalise_login(value)
    except AccountError:
        return None


def google_identity(claims: Mapping[str, Any]) -> SocialIdentity:
    """Google's ID token: ``sub`` is stable; ``email`` counts only with ``email_verified``."""
    # OIDC Core §5.1 makes email_verified a boolean; some issuers send the string "true".
    verified = claims.get("email_verified") in (True, "true")
    return SocialIdentity(
        subject=_subject(claims.get("sub")),
        email=_email(claims.get("email")) if verified else None,
    )


def yandex_identity(info: Mapping[str, Any]) -> SocialIdentity:
    """Yandex ID's ``/info``: ``id`` is stable; ``default_email`` is a confirmed address."""
    return SocialIdentity(subject=_subject(info.get("id")), email=_email(info.get("default_email")))
