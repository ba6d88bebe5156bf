"""Fixtures of the direct answers' tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask

from oidc_server.app import create_app
from oidc_server.tokens.store import TokenStore


@pytest.fixture
def app_with(settings: Any, token_store: TokenStore) -> Iterator[Callable[..., Flask]]:
    """Apps built with some settings changed, on the test's database and store."""
    made: list[Flask] = []

    def build(**changes: Any) -> Flask:
        made.append(create_app(replace(settings, **changes), store=token_store))
        return made[-1]

    yield build
    for app in made:
        app.extensions["oidc"].db.dispose()
