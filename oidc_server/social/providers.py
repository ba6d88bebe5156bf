"""The provider registry: each social sign-in provider as configuration plus a claims mapper.

Adding a provider (VK, GitHub, any OpenID Connect issuer) is one more factory in
``PROVIDERS``: an OIDC issuer needs its discovery URL and is read from its verified ID token;
a plain OAuth 2.0 provider needs its authorize, token and user-info URLs. A provider is enabled
when its client id is configured; the others do not exist as far as the API is concerned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from .claims import SocialIdentity, google_identity, yandex_identity

GOOGLE_ISSUER = "https://accounts.google.com"


@dataclass(frozen=True)
class ProviderSpec:
    """What the server needs to know about one identity provider."""

    name: str
    client_id: str
    client_secret: str
    scope: str
    to_identity: Callable[[Mapping[str, Any]], SocialIdentity]
    #: OpenID Connect: the discovery document. The identity then comes from the ID token.
    metadata_url: str = ""
    #: Plain OAuth 2.0 endpoints (they override discovery when both are given).
    authorize_url: str = ""
    token_url: str = ""
    #: Plain OAuth 2.0: where the identity comes from, and how the access token is presented.
    userinfo_url: str = ""
    userinfo_scheme: str = "Bearer"
    userinfo_params: tuple[tuple[str, str], ...] = ()
    #: Other spellings of an issuer that the provider itself documents as equivalent.
    issuer_aliases: Mapping[str, tuple[str, ...]] | None = None

    @property
    def is_openid(self) -> bool:
        return bool(self.metadata_url)

    @property
    def display_name(self) -> str:
        return self.name.capitalize()

    def accepted_issuers(self, issuer: str) -> list[str]:
        """``issuer`` from discovery and any documented alias of it."""
        return [issuer, *(self.issuer_aliases or {}).get(issuer, ())]


def google(settings: Settings) -> ProviderSpec:
    """Google as an OpenID Connect provider, from its discovery document."""
    return ProviderSpec(
        name="google",
        client_id=settings.google_client_id,
        client_secret=settings.google_client_secret,
        scope="openid email profile",
        to_identity=google_identity,
        metadata_url=settings.google_metadata_url,
        # Google documents that its ID tokens may carry iss without the scheme.
        issuer_aliases={GOOGLE_ISSUER: ("accounts.google.com",)},
    )


def yandex(settings: Settings) -> ProviderSpec:
    """Yandex ID as a plain OAuth 2.0 provider; its ``/info`` wants ``Authorization: OAuth``."""
    return ProviderSpec(
        name="yandex",
        client_id=settings.yandex_client_id,
        client_secret=settings.yandex_client_secret,
        scope="login:email login:info",
        to_identity=yandex_identity,
        authorize_url=settings.yandex_authorize_url,
        token_url=settings.yandex_token_url,
        userinfo_url=settings.yandex_userinfo_url,
        userinfo_scheme="OAuth",
        userinfo_params=(("format", "json"),),
    )


#: Every provider the server knows, by the name used in URLs and login history.
PROVIDERS: dict[str, Callable[[Settings], ProviderSpec]] = {"google": google, "yandex": yandex}


def enabled_providers(settings: Settings) -> dict[str, ProviderSpec]:
    """The providers whose client id is configured."""
    specs = (factory(settings) for factory in PROVIDERS.values())
    return {spec.name: spec for spec in specs if spec.client_id}
