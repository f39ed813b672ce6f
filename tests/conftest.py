"""Shared fixtures: the real FIB-SEM volumes in ../shared/data (helpers live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import shared_file


@pytest.fixture
def fib25() -> Path:
    return shared_file("fib25_sample2.h5")


@pytest.fixture
def gala() -> Path:
    return shared_file("gala_train.h5")


@pytest.fixture
def isbi() -> Path:
    return shared_file("isbi2012_ssTEM.h5")
