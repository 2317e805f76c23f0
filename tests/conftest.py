"""Fixtures shared across the test files: a model root holding one closed-form artifact and
in-process clients on it (the builders themselves live in tests/service_fixtures.py), and
Hypothesis's deterministic profile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import settings

from tests.service_fixtures import AffineFlow, affine_flow, build_affine_artifact, service_client

# Property tests draw the same examples on every run and machine, like the rest of the suite:
# a failure found once fails again on the next run, not only where an example database kept it.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AffineFlow]:
    """A model root holding ``toy`` version 1: the affine flow of seed 2 on three features."""
    root = tmp_path_factory.mktemp("models")
    _, flow = build_affine_artifact(root, "toy", 1, affine_flow(3, seed=2))
    return root, flow


@pytest.fixture(scope="module")
def toy_client(toy_repo: tuple[Path, AffineFlow]) -> Iterator[TestClient]:
    """The service on :func:`toy_repo` with default settings, shared by one test module."""
    with service_client(toy_repo[0]) as client:
        yield client
