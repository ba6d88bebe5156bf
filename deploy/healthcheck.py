"""Container health check: exit 0 if the app on ``PORT`` answers 200 at a path, else 1.

The image has no curl; this runs with the image's own Python. Usage:
``python /app/deploy/healthcheck.py [/health/ready]``.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PATH = "/health/ready"
TIMEOUT_SECONDS = 3


def check(port: str, path: str = DEFAULT_PATH) -> bool:
    """True when ``http://127.0.0.1:<port><path>`` answers 200 in time."""
    if not path.startswith("/"):
        return False
    try:
        url = f"http://127.0.0.1:{int(port)}{path}"
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str]) -> int:
    """Check the path in ``argv`` (default /health/ready) on ``PORT`` (default 8000)."""
    path = argv[1] if len(argv) > 1 else DEFAULT_PATH
    return 0 if check(os.environ.get("PORT", "8000"), path) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
