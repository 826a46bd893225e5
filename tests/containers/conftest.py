"""Registers the `containers` marker here too, so --strict-markers passes whatever
pyproject.toml lists (select or deselect with -m containers / -m 'not containers')."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "containers: builds and runs the container image (podman; minutes)"
    )
