"""The ceiling of our design for ``client_credentials``: Flask, the same server, one RS256 sign.

A minimal Flask app that does only what a token request cannot skip: parse the form, compare
the Basic credentials, sign an RS256 JWT with a 2048-bit key and answer JSON. It runs under the
same granian settings and RSGI adapter as production (``oidc_server/rsgi.py``) and is loaded
like ``make bench`` loads us (bench/load.mjs, 32 connections). No Authlib, Redis, database,
metrics, logs or security headers: whatever it serves is more than any Flask-based token
endpoint can, on this machine. docs/scaling.md compares it with the peer and with us.

    .venv/bin/python scripts/bench_floor.py [--seconds 8] [--rounds 3] [--workers N]

Needs Node.js and bench/'s npm packages (``cd bench && npm ci``); listens on a free loopback
port and stops its server when done.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLIENT = base64.b64encode(b"floor-client:floor-secret").decode()


def b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def build_rsgi_app() -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from flask import Flask, jsonify, request

    from oidc_server.rsgi import RSGIServer

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app = Flask(__name__)

    @app.post("/token")
    def token() -> Any:
        if request.form.get("grant_type") != "client_credentials":
            return jsonify(error="unsupported_grant_type"), 400
        if not hmac.compare_digest(request.headers.get("Authorization", ""), f"Basic {CLIENT}"):
            return jsonify(error="invalid_client"), 401
        now = int(time.time())
        header = {"alg": "RS256", "typ": "at+jwt", "kid": "floor"}
        claims = {
            "iss": "http://127.0.0.1",
            "sub": "floor-client",
            "aud": "http://127.0.0.1",
            "client_id": "floor-client",
            "scope": "roles:read",
            "iat": now,
            "exp": now + 900,
            "jti": uuid.uuid4().hex,
        }
        signing_input = (
            b64url(json.dumps(header).encode()) + b"." + b64url(json.dumps(claims).encode())
        )
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        access_token = (signing_input + b"." + b64url(signature)).decode()
        return jsonify(access_token=access_token, token_type="Bearer", expires_in=900)  # noqa: S106

    return RSGIServer(app.wsgi_app, threads=4, max_body=64 * 1024, body_timeout=30.0)


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
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "granian", "--interface", "rsgi"),
            *("--workers", str(args.workers), "--port", str(port), "--log-level", "warning"),
            "bench_floor:build_rsgi_app",
            "--factory",
        ],
        cwd=ROOT / "scripts",
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
