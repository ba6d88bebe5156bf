"""`make run`'s embedded mode: the console script serves on SQLite and in-process stores."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import requests

from .support.cli import OIDC_SERVER
from .support.waiting import free_port


def test_upgrade_then_serve_answers_discovery_and_issues_tokens(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "OIDC_", "SECRET_", "TEST_"))
    }
    env.update(
        INSTANCE_DIR=str(tmp_path / "instance"),
        OIDC_KEYS_DIR=str(tmp_path / "keys"),
        PORT=str(port),
        OIDC_ISSUER=f"http://127.0.0.1:{port}",
    )
    upgrade = subprocess.run(
        [OIDC_SERVER, "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert (tmp_path / "instance" / "oidc_server.db").exists()
    server = subprocess.Popen(
        [OIDC_SERVER, "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/.well-known/openid-configuration"
        deadline = time.monotonic() + 30  # a readiness poll, not a speed assertion
        while True:
            try:
                discovery = requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        assert discovery.json()["issuer"] == f"http://127.0.0.1:{port}"
        assert len(list((tmp_path / "keys").glob("*.pem"))) == 1
        created = subprocess.run(
            [
                OIDC_SERVER,
                "clients",
                "create",
                "--name",
                "m",
                "--grant-type",
                "client_credentials",
                "--scope",
                "roles:read",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        import json

        creds = json.loads(created.stdout)
        token = requests.post(
            f"http://127.0.0.1:{port}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(creds["client_id"], creds["client_secret"]),
            timeout=5,
        )
        assert token.status_code == 200 and token.json()["access_token"]
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stderr:
            server.stderr.close()
