"""The database module's helpers that are not covered through the app."""

from __future__ import annotations

import subprocess
import sys


def test_import_driver_imports_the_driver_the_url_names() -> None:
    # In a fresh interpreter: this one has imported psycopg long ago.
    script = (
        "import sys\n"
        "from oidc_server.db import import_driver\n"
        "assert 'psycopg' not in sys.modules\n"
        "import_driver('postgresql+psycopg://postgres@127.0.0.1:1/unused')\n"
        "assert 'psycopg' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
