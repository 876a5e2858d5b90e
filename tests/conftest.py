"""Shared fixtures: a tiny Fashion-MNIST-format dataset and the CLI runners (helpers are in helpers.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import settings

# Local runs draw fresh examples (that is how the property tests find bugs); CI
# (.ci/run sets HYPOTHESIS_PROFILE=ci) draws the same ones every time, so a landing is
# never decided by a new draw. A failure found locally prints its reproducing blob.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("default", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

from helpers import SUBPROCESS_ENV, TINY_TEST, TINY_TRAIN, assert_one_error_line, write_idx

# the helpers (constants, matchers, the in-process CLI runner) live in helpers.py; importing it
# also sets torch to one thread for the whole suite


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST-format folder with 6000 training and 200 test images of noise.

    The first two pixels of each training image hold its index, so tests can tell which
    images a split holds.
    """
    root = tmp_path_factory.mktemp("tiny-fashion-mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", TINY_TRAIN), ("t10k", TINY_TEST)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0], x[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
        write_idx(root / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return root


@pytest.fixture
def run_amc(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m amc ARGS`` in a subprocess, in ``tmp_path``, and capture its output."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "amc", *map(str, args)], cwd=tmp_path,
                              env={**SUBPROCESS_ENV, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)

    return run


@pytest.fixture
def cli_error() -> Callable[..., str]:
    return assert_one_error_line
