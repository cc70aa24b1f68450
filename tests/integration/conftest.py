"""A texture-defect work dir trained once per test session on a tiny built-in data set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defectkit.cli import EXIT_OK, main

REPO = Path(__file__).resolve().parents[2]
TEXTURE_CONFIG = str(REPO / "configs" / "texture_defect.py")
# Small enough for CI; one torch thread because CI has two cores and decode threads need the other.
TINY_TEXTURE_OPTIONS = [
    "builtin_dataset.n_normal=40",
    "builtin_dataset.n_defect=16",
    "pipeline.0.model.coreset_size=500",
    # A few pasted tiles keep the copy-paste path covered without 60 per fold on a tiny set.
    "pipeline.0.pixel.copy_paste.images=4",
    "runtime.num_threads=1",
]


@pytest.fixture(scope="session")
def texture_config() -> str:
    """Path of the texture-defect reference config."""
    return TEXTURE_CONFIG


@pytest.fixture(scope="session")
def tiny_texture_options() -> list[str]:
    """``--cfg-options`` values that shrink the texture config for tests."""
    return list(TINY_TEXTURE_OPTIONS)


@pytest.fixture(scope="session")
def tiny_texture_work_dir(tmp_path_factory) -> Path:
    """A work dir (with a space and non-ASCII name) whose gate has been fitted; treat it as read-only."""
    threads = torch.get_num_threads()
    work_dir = tmp_path_factory.mktemp("tiny gate ü")
    try:
        assert main(["train", TEXTURE_CONFIG, "--work-dir", str(work_dir), "--cfg-options", *TINY_TEXTURE_OPTIONS]) == EXIT_OK
    finally:
        torch.set_num_threads(threads)
    return work_dir
