"""Helpers shared by the tests: the tiny test net and dataset sizes, the subprocess environment,
matchers, the idx writer and the in-process CLI runner. Test files import them with
``from helpers import ...`` (pytest's default rootdir import mode puts ``tests/`` on
``sys.path``, as it does for ``conftest.py``); the pytest fixtures live in ``conftest.py``."""
from __future__ import annotations

import atexit
import gzip
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_NET = FIXTURES / "tiny_net.py"
TINY_TRAIN, TINY_TEST = 6000, 200

# The suite runs on small machines beside other jobs; with more OpenMP threads than free cores
# the tiny convs here ran 10-30x slower, so everything (subprocesses included) uses one thread.
torch.set_num_threads(1)
# Latency tables go to a folder of this test process (each xdist worker has its own), not the
# user's cache; set before SUBPROCESS_ENV so every subprocess the tests start uses it too.
os.environ["AMC_CACHE_DIR"] = tempfile.mkdtemp(prefix="amc-test-cache-")
atexit.register(shutil.rmtree, os.environ["AMC_CACHE_DIR"], ignore_errors=True)
# The workers keep each other busy, so the busy-machine warning before timings would land in
# tests that read stderr; tests/test_latency_table.py checks the warning itself.
os.environ["AMC_NO_LOAD_CHECK"] = "1"
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def exactly(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern matching ``message`` word for word."""
    return f"^{re.escape(message)}$"


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` (uint8) in the idx format of the MNIST family, gzipped."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def stamped_index(images: torch.Tensor) -> torch.Tensor:
    """The index of each image in the tiny training split (see the ``tiny_data_dir`` fixture in conftest.py)."""
    return images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()


def assert_one_error_line(proc: subprocess.CompletedProcess, message: str | None = None) -> str:
    """Exit code 2 and stderr exactly ``error: <message>``; returns the message."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    if message is not None:
        assert lines[0] == f"error: {message}"
    return lines[0][len("error: "):]


def in_process(capsys: pytest.CaptureFixture, *args) -> subprocess.CompletedProcess:
    """``amc ARGS`` in this process (much faster than a subprocess), output captured."""
    from amc.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse's errors
        rc = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def in_process_error(capsys: pytest.CaptureFixture, message: str | None, *args) -> str:
    """Run ``amc ARGS`` in-process and check it fails with one ``error:`` line; returns the message."""
    return assert_one_error_line(in_process(capsys, *args), message)


def pruned_checkpoint(root: Path, data_dir: Path, reward_set_size: int = 300) -> Path:
    """``amc prune --policy uniform:0.5`` of the tiny test net with random weights, into ``root/pruned``."""
    from amc.cli import main
    from amc.models import ModelSpec, build_model

    model = f"{TINY_NET}:factory"
    torch.manual_seed(0)
    torch.save(build_model(ModelSpec(model, 1, 10)).state_dict(), root / "tiny.pt")
    assert main(["prune", "--model", model, "--weights", str(root / "tiny.pt"), "--data-dir", str(data_dir),
                 "--policy", "uniform:0.5", "--reward-set-size", str(reward_set_size), "--calib-batches", "2",
                 "--calib-batch-size", "8", "--out", str(root / "pruned"), "--json", "--threads", "1"]) == 0
    return root / "pruned"
