"""The ceiling of a Python design for ``client_credentials``: the same server, one RS256 sign.

A minimal token endpoint that does only what a token request cannot skip: parse the form,
compare the Basic credentials, sign an RS256 JWT with a 2048-bit key and answer JSON. It is
loaded like ``make bench`` loads us (bench/load.mjs, 32 connections). No Authlib, database,
metrics, logs or security headers: whatever it serves is more than a token endpoint built
that way can, on this machine. docs/scaling.md compares it with the peer and with us.

- ``--design flask`` (default): a Flask view under the same granian settings and RSGI adapter
  as production (``oidc_server/rsgi.py``), 4 threads per worker.
- ``--design rsgi``: no framework and no thread pool at all, the handler runs on granian's
  event loop: the floor of any Python design under this server.
- ``--redis URL``: also one Redis ``GET`` per request, what our per-request check of the
  clients generation costs (every worker refuses a deleted client at once).

    .venv/bin/python scripts/bench_floor.py [--design flask|rsgi] [--redis URL]
        [--seconds 8] [--rounds 3] [--workers N]

Needs Node.js and bench/'s npm packages (``cd bench && npm ci``); listens on a free loopback
port and stops its server when done.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLIENT = base64.b64encode(b"floor-client:floor-secret").decode()


def b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _signer() -> Any:
    """``sign(client_id, scope)``: a new RS256 access token, as compact JWS text."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = b64url(json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": "floor"}).encode())

    def sign(client_id: str, scope: str) -> str:
        now = int(time.time())
        claims = {
            "iss": "http://127.0.0.1",
            "sub": client_id,
            "aud": "http://127.0.0.1",
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + 900,
            "jti": uuid.uuid4().hex,
        }
        signing_input = header + b"." + b64url(json.dumps(claims).encode())
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return (signing_input + b"." + b64url(signature)).decode()

    return sign


def _redis_get() -> Any:
    """One Redis round trip per request when ``FLOOR_REDIS_URL`` is set, else nothing."""
    url = os.environ.get("FLOOR_REDIS_URL")
    if not url:
        return lambda: None
    import redis

    client = redis.Redis.from_url(url)
    return lambda: client.get("floor:clients-generation")


def build_rsgi_app() -> Any:
    """The Flask design: a view behind production's RSGI adapter and thread pool."""
    from flask import Flask, jsonify, request

    from oidc_server.rsgi import RSGIServer

    sign, redis_get = _signer(), _redis_get()
    app = Flask(__name__)

    @app.post("/token")
    def token() -> Any:
        if request.form.get("grant_type") != "client_credentials":
            return jsonify(error="unsupported_grant_type"), 400
        if not hmac.compare_digest(request.headers.get("Authorization", ""), f"Basic {CLIENT}"):
            return jsonify(error="invalid_client"), 401
        redis_get()
        access_token = sign("floor-client", "roles:read")
        return jsonify(access_token=access_token, token_type="Bearer", expires_in=900)  # noqa: S106

    return RSGIServer(app.wsgi_app, threads=4, max_body=64 * 1024, body_timeout=30.0)


class BareTokenEndpoint:
    """The framework-free design: an RSGI handler run on the event loop, nothing else."""

    def __init__(self) -> None:
        self.sign, self.redis_get = _signer(), _redis_get()

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        form = urllib.parse.parse_qs((await protocol()).decode())
        if form.get("grant_type") != ["client_credentials"]:
            status, answer = 400, {"error": "unsupported_grant_type"}
        elif not hmac.compare_digest(scope.headers.get("authorization", ""), f"Basic {CLIENT}"):
            status, answer = 401, {"error": "invalid_client"}
        else:
            self.redis_get()
            token = self.sign("floor-client", "roles:read")
            status, answer = 200, {"access_token": token, "token_type": "Bearer", "expires_in": 900}
        headers = [("content-type", "application/json"), ("cache-control", "no-store")]
        protocol.response_bytes(status, headers, json.dumps(answer).encode())


def build_bare_app() -> BareTokenEndpoint:
    return BareTokenEndpoint()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load(url: str, seconds: int) -> dict[str, Any]:
    spec = {
        "url": url,
        "method": "POST",
        "seconds": seconds,
        "connections": 32,
        "headers": {
            "authorization": f"Basic {CLIENT}",
            "content-type": "application/x-www-form-urlencoded",
        },
        "body": "grant_type=client_credentials",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as fh:
        json.dump(spec, fh)
        fh.flush()
        out = subprocess.run(
            ["node", "load.mjs", fh.name],
            cwd=ROOT / "bench",
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--design", choices=("flask", "rsgi"), default="flask")
    parser.add_argument("--redis", metavar="URL", help="one GET per request on this Redis")
    args = parser.parse_args()
    port = free_port()
    factory = {"flask": "build_rsgi_app", "rsgi": "build_bare_app"}[args.design]
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "granian", "--interface", "rsgi"),
            *("--workers", str(args.workers), "--port", str(port), "--log-level", "warning"),
            f"bench_floor:{factory}",
            "--factory",
        ],
        cwd=ROOT / "scripts",
        env={**os.environ, "FLOOR_REDIS_URL": args.redis or ""},
    )
    url = f"http://127.0.0.1:{port}/token"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the floor server did not start") from None
                time.sleep(0.1)
        load(url, 2)  # warm-up
        for n in range(1, args.rounds + 1):
            result = load(url, args.seconds)
            print(
                f"round {n}: {result['rps']:.0f} req/s, p50 {result['p50']} ms, "
                f"p99 {result['p99']} ms, errors {result['bad']}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
