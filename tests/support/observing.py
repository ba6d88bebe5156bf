"""Watching what the app reports: its JSON log lines and its Prometheus samples."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from oidc_server import observability
from oidc_server.logs import JsonFormatter


class LogCapture:
    """JSON lines written through a handler set up as the app's own (filters included)."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        observability.install_log_filters([self.handler])

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line]


def metric(name: str, **labels: str) -> float:
    """The current value of one sample of the default registry, read through /metrics' format."""
    from prometheus_client import REGISTRY, generate_latest

    return sample(generate_latest(REGISTRY).decode(), name, **labels)


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0
