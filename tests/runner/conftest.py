"""Fixtures of the runner tests (helpers: runner_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner_helpers import dode_run, write_test_conf


@pytest.fixture(scope="session")
def tiny_conf(tmp_path_factory) -> Path:
    """A config folder with the test model, metric and dataset (``hydra.searchpath``)."""
    return write_test_conf(tmp_path_factory.mktemp("conf"))


@pytest.fixture(scope="session")
def reference(tiny_conf, tmp_path_factory) -> Path:
    """An uninterrupted one-process run of the base configuration."""
    results = tmp_path_factory.mktemp("reference")
    assert dode_run(tiny_conf, results) == 0
    return results
