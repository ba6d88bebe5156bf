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


class _Recorded(Exception):
    """Raised by the listener below once it has seen what the driver would be called with."""


def _connect_parameters(url: str, connect_timeout: int | None) -> dict[str, object]:
    from sqlalchemy import event

    from oidc_server.db import make_engine

    engine = make_engine(url, connect_timeout)
    seen: dict[str, object] = {}

    @event.listens_for(engine, "do_connect")
    def record(_dialect: object, _record: object, _args: object, params: dict[str, object]) -> None:
        seen.update(params)
        raise _Recorded

    try:
        engine.connect()
    except _Recorded:
        pass
    finally:
        engine.dispose()
    return seen


def test_a_connect_timeout_is_given_to_the_driver_unless_the_url_sets_one() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/anything"
    assert _connect_parameters(url, 2)["connect_timeout"] == 2
    assert _connect_parameters(url + "?connect_timeout=7", 2)["connect_timeout"] == "7"
    assert "connect_timeout" not in _connect_parameters(url, None)
