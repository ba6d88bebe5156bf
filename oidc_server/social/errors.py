"""The one exception of social sign-in, with a machine-readable code the API maps to a status."""

from __future__ import annotations


class SocialError(Exception):
    """A social sign-in or linking request that cannot be honoured."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
