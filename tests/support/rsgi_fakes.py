"""Stand-ins for what granian hands an RSGI app: a request scope and its protocol, to drive
``oidc_server.rsgi.RSGIServer`` without a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Headers:
    """granian's RSGIHeaders: items() lists every pair, repeated names included."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    def get(self, key: str, default: Any = None) -> Any:
        return next((v for k, v in self.pairs if k == key), default)

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)


@dataclass
class Scope:
    headers: Headers
    method: str = "POST"
    path: str = "/oauth/token"
    query_string: str = "a=1"
    server: str = "127.0.0.1:8000"
    client: str = "10.1.2.3:5555"
    scheme: str = "http"
    http_version: str = "1.1"
    proto: str = "http"
    extra: dict[str, Any] = field(default_factory=dict)


class Protocol:
    """A request's body, and the answer given to it."""

    def __init__(self, body: bytes = b"") -> None:
        self.body = body
        self.answered: tuple[int, list[tuple[str, str]], bytes] | None = None

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answered = (status, headers, body)
