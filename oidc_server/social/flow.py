"""The two ways a social sign-in reaches us, reduced to a verified ``SocialIdentity``.

Browser flow: ``begin`` keeps the state, nonce and PKCE verifier in the token store under the
state (``put_once``: short TTL, single use, shared by every worker) and sends the browser to
the provider; ``finish_callback`` takes them back atomically, so a replayed, forged or expired
state finds nothing. App flow: ``exchange`` redeems a code an app obtained itself, for a
redirect URI the operator allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..tokens.store import TokenStore
from .claims import SocialIdentity
from .client import CodeRejected, IdTokenInvalid, ProviderClient, ProviderError
from .errors import SocialError

STATE_NAMESPACE = "social_state"
CALLBACK_PATH = "/api/v1/social/callback/{provider}"
#: Provider error codes are RFC 6749 §4.1.2.1 tokens; anything else is not echoed back.
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


class SocialFlows:
    """Starts and finishes sign-ins with the enabled providers."""

    def __init__(
        self,
        clients: Mapping[str, ProviderClient],
        store: TokenStore,
        *,
        issuer: str,
        redirect_uris: Iterable[str],
        state_ttl: int,
    ) -> None:
        self._clients = dict(clients)
        self._store = store
        self._issuer = issuer.rstrip("/")
        self._redirect_uris = frozenset(redirect_uris)
        self._state_ttl = max(1, state_ttl)

    def callback_uri(self, provider: str) -> str:
        """The redirect URI to register with the provider for the browser flow."""
        return self._issuer + CALLBACK_PATH.format(provider=provider)

    def client(self, provider: str) -> ProviderClient:
        """The enabled provider called ``provider``; unknown and unconfigured ones are absent."""
        found = self._clients.get(provider)
        if found is None:
            raise SocialError("provider_not_found", f"no sign-in provider named {provider!r}")
        return found

    def allows_redirect_uri(self, provider: str, redirect_uri: str) -> bool:
        return redirect_uri == self.callback_uri(provider) or redirect_uri in self._redirect_uris

    # Browser flow ---------------------------------------------------------------------------
    def begin(self, provider: str) -> str:
        """The provider's authorization URL for a new sign-in; its secrets stay server-side."""
        client = self.client(provider)
        redirect_uri = self.callback_uri(provider)
        try:
            request = client.authorization_request(redirect_uri)
        except ProviderError:
            raise _unavailable(client) from None
        self._store.put_once(
            STATE_NAMESPACE,
            request.state,
            {
                "provider": provider,
                "redirect_uri": redirect_uri,
                "nonce": request.nonce,
                "code_verifier": request.code_verifier,
            },
            self._state_ttl,
        )
        return request.url

    def finish_callback(
        self, provider: str, *, code: str | None, state: str | None, error: str | None
    ) -> SocialIdentity:
        """Check the callback's state against what ``begin`` kept, then redeem its code."""
        client = self.client(provider)
        # Taken first, whatever the outcome: a state is good for one callback only.
        saved = self._store.take_once(STATE_NAMESPACE, state) if state else None
        if error:
            if error == "access_denied":
                raise SocialError(
                    "access_denied", f"the sign-in was cancelled at {client.spec.display_name}"
                )
            reported = error if _ERROR_CODE.fullmatch(error) else "unknown"
            raise SocialError(
                "authorization_failed",
                f"{client.spec.display_name} did not authorize the sign-in ({reported})",
            )
        if saved is None or saved.get("provider") != provider:
            raise SocialError(
                "invalid_state",
                "the sign-in state is unknown, expired or already used; start the sign-in again",
            )
        if not code:
            raise SocialError("invalid_request", "the callback carries no authorization code")
        nonce = saved.get("nonce")
        if client.spec.is_openid and not nonce:  # never let a missing nonce skip the check
            raise SocialError("invalid_state", "the sign-in state is incomplete")
        return self._identity(
            client,
            code=code,
            redirect_uri=saved["redirect_uri"],
            code_verifier=saved.get("code_verifier"),
            nonce=nonce,
        )

    # App flow -------------------------------------------------------------------------------
    def exchange(
        self,
        provider: str,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str | None = None,
        nonce: str | None = None,
    ) -> SocialIdentity:
        """Redeem a code an app obtained itself; its redirect URI must be one we allow."""
        client = self.client(provider)
        if not self.allows_redirect_uri(provider, redirect_uri):
            raise SocialError(
                "invalid_redirect_uri",
                "redirect_uri is not one the operator configured (SOCIAL_REDIRECT_URIS)",
            )
        return self._identity(
            client, code=code, redirect_uri=redirect_uri, code_verifier=code_verifier, nonce=nonce
        )

    @staticmethod
    def _identity(
        client: ProviderClient,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str | None,
        nonce: str | None,
    ) -> SocialIdentity:
        name = client.spec.display_name
        try:
            return client.identity(
                code=code, redirect_uri=redirect_uri, code_verifier=code_verifier, nonce=nonce
            )
        except CodeRejected:
            raise SocialError(
                "invalid_grant",
                f"{name} refused the authorization code: it is invalid, expired or already used",
            ) from None
        except IdTokenInvalid:
            raise SocialError(
                "invalid_id_token", f"the ID token from {name} failed verification"
            ) from None
        except ProviderError:
            raise _unavailable(client) from None


def _unavailable(client: ProviderClient) -> SocialError:
    return SocialError(
        "provider_error",
        f"{client.spec.display_name} is unavailable or answered unexpectedly; try again",
    )
