"""The production server (``python -m oidc_server.serve``), started for real by tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: What `make run-prod` and the image run.
COMMAND = [sys.executable, "-m", "oidc_server.serve"]


def spawn_server(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start the server with ``env``; everything it prints goes to ``log``."""
    with open(log, "wb") as sink:
        return subprocess.Popen(
            COMMAND, cwd=ROOT, env=dict(env), stdout=sink, stderr=subprocess.STDOUT
        )


def children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``: the server's workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found
