"""Shared fixtures: where the real development data lives (tests needing it skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Test processes share two cores with decode threads and each other: OpenMP workers that spin
# while waiting slow small forward passes down by orders of magnitude. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Two cores on CI: more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_data_root() -> Path:
    """``$DEFECTKIT_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DEFECTKIT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def real_data():
    """Return a function ``(name) -> Path`` of a real data set, skipping the test when it is absent."""

    def locate(name: str) -> Path:
        path = shared_data_root() / name
        if not path.is_dir():
            pytest.skip(f"real data set {name!r} not found at {path} (set DEFECTKIT_DATA to its parent folder)")
        return path

    return locate
