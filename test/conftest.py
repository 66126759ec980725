"""Shared fixtures: the read-only data folder (../shared or $FER_SHARED)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import shared_path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """$FER_SHARED, else ../shared beside the checkout (the one rule, in training.data)."""
    return shared_path()


def need_shared(*parts: str) -> Path:
    """Path inside the shared data folder, or skip the test saying what is missing."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} is missing (set FER_SHARED to the data folder)")
    return path


@pytest.fixture
def shared():
    return need_shared()


@pytest.fixture
def media():
    return need_shared("media")
