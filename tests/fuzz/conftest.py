"""The app under fuzzing has Google and Yandex enabled, pointed at the local stand-ins.

So the social operations are fuzzed for real (an unknown provider is 404, a known one talks to
the stand-in over HTTP) rather than answering 404 for every provider.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from oidc_server.config import Settings

from ..social.conftest import provider_env, settings_from_env
from ..support.fake_providers import FakeProviders


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    with FakeProviders() as providers:
        yield providers


@pytest.fixture
def settings(settings: Settings, fake: FakeProviders) -> Settings:
    """The shared settings, with both providers enabled through the environment."""
    return settings_from_env(settings, provider_env(fake))
