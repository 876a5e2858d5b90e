"""Checkpoints: safetensors and state_dict round trips, refusing pickles, atomic writes."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from amc.checkpoint import (WEIGHTS_DIR, atomic_write_bytes, atomic_write_json, base_weights_entry,
                            find_base_weights, load_state_dict, load_weights_into, read_json, save_checkpoint,
                            save_weights)
from amc.errors import AmcError
from amc.models import ModelSpec, build_model

from helpers import SUBPROCESS_ENV, exactly


def _model(name: str = "resnet20", num_classes: int = 10, width: float = 0.25, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelSpec(name, 1, num_classes, width))
    # non-default BN statistics, so a round trip that dropped buffers would show
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def _same_outputs(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_safetensors_round_trip(tmp_path: Path) -> None:
    src, dst = _model(seed=0), _model(seed=1)
    assert not _same_outputs(src, dst)
    save_weights(tmp_path / "w.safetensors", src)
    load_weights_into(dst, load_state_dict(tmp_path / "w.safetensors"))
    assert _same_outputs(src, dst)


@pytest.mark.parametrize("wrapped", [False, True])
def test_pt_state_dict_round_trip(tmp_path: Path, wrapped: bool) -> None:
    src, dst = _model(seed=0), _model(seed=1)
    torch.save({"state_dict": src.state_dict()} if wrapped else src.state_dict(), tmp_path / "w.pt")
    load_weights_into(dst, load_state_dict(tmp_path / "w.pt"))
    assert _same_outputs(src, dst)


def test_save_checkpoint_writes_weights_then_json(tmp_path: Path) -> None:
    model = _model()
    meta = {"model": ModelSpec("resnet20", 1, 10, 0.25).to_dict(), "flops": torch.tensor(7)}
    save_checkpoint(tmp_path / "ckpt", model, meta)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.json", "model.safetensors"]
    back = read_json(tmp_path / "ckpt" / "model.json")
    assert back == {"model": {"name": "resnet20", "in_channels": 1, "num_classes": 10, "width": 0.25}, "flops": 7}
    rebuilt = build_model(ModelSpec.from_dict(back["model"]))
    load_weights_into(rebuilt, load_state_dict(tmp_path / "ckpt" / "model.safetensors"))
    assert _same_outputs(model, rebuilt)


# --------------------------------------------------------------------------- refusing pickles

def _write_marker(path: str) -> None:
    Path(path).write_text("this ran while unpickling")


class _RunsCode:
    def __init__(self, how: str, marker: Path) -> None:
        self.how, self.marker = how, marker

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch {self.marker}",)
        return _write_marker, (str(self.marker),)


@pytest.mark.parametrize("how", ["os.system", "function"])
@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain-pickle"])
def test_pickle_that_would_run_code_is_refused(tmp_path: Path, how: str, fmt: str) -> None:
    marker = tmp_path / "marker"
    payload = {"conv.weight": torch.zeros(2), "evil": _RunsCode(how, marker)}
    path = tmp_path / "evil.pt"
    if fmt == "plain-pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(AmcError, match=f"^refusing to load {path}: "):
        load_state_dict(path)
    assert not marker.exists()


def test_refusal_names_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"evil": _RunsCode("function", tmp_path / "marker")}, path)
    with pytest.raises(AmcError, match=exactly(f"refusing to load {path}: it holds pickled objects beyond plain "
                                               "tensors (only state_dicts load, with weights_only=True)")):
        load_state_dict(path)


# --------------------------------------------------------------------------- damaged files

def test_truncated_safetensors(tmp_path: Path) -> None:
    save_weights(tmp_path / "w.safetensors", _model())
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AmcError, match=f"^corrupt or truncated safetensors file {tmp_path}/w.safetensors: "):
        load_state_dict(tmp_path / "w.safetensors")


def test_truncated_pt(tmp_path: Path) -> None:
    torch.save(_model().state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(AmcError, match=f"^corrupt or unreadable weights file {tmp_path}/w.pt: "):
        load_state_dict(tmp_path / "w.pt")


@pytest.mark.parametrize("content,message", [
    (b"", "weights file is empty: {path}"),
    (b"hello world\n", "corrupt or unreadable weights file {path}: KeyError: 101"),
])
def test_garbage_pt(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(AmcError, match=exactly(message.format(path=path))):
        load_state_dict(path)


@pytest.mark.parametrize("obj", [torch.zeros(3), {"a": {"b": torch.zeros(3)}}, {1: torch.zeros(3)}, [torch.zeros(1)]])
def test_pt_that_is_not_a_state_dict(tmp_path: Path, obj) -> None:
    torch.save(obj, tmp_path / "w.pt")
    with pytest.raises(AmcError, match=exactly(f"{tmp_path}/w.pt is not a state_dict of tensors")):
        load_state_dict(tmp_path / "w.pt")


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(AmcError, match=exactly(f"weights file not found: {tmp_path}/nope.safetensors")):
        load_state_dict(tmp_path / "nope.safetensors")


def test_corrupt_and_missing_json(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"model": {"name": "plain20",')
    with pytest.raises(AmcError, match=f"^corrupt JSON in {tmp_path}/model.json: "):
        read_json(tmp_path / "model.json")
    with pytest.raises(AmcError, match=exactly(f"file not found: {tmp_path}/other.json")):
        read_json(tmp_path / "other.json")


# --------------------------------------------------------------------------- weights that do not fit

def test_weights_of_another_architecture(tmp_path: Path) -> None:
    # resnet20 has projection shortcuts that plain20 lacks
    state = _model("resnet20").state_dict()
    with pytest.raises(AmcError, match=r"^weights w\.pt do not fit the model: \d+ unexpected keys \(first: layer2\.0\.shortcut"):
        load_weights_into(_model("plain20"), state, source="weights w.pt")


def test_weights_for_another_number_of_classes() -> None:
    state = _model("plain20", num_classes=5).state_dict()
    with pytest.raises(AmcError, match=exactly("weights do not fit the model: 2 shape mismatches "
                                               "(first: fc.weight is (5, 16), model wants (10, 16))")):
        load_weights_into(_model("plain20", num_classes=10), state)


def test_weights_of_another_width() -> None:
    state = _model("plain20", width=0.5).state_dict()
    with pytest.raises(AmcError, match=r"^weights do not fit the model: \d+ shape mismatches \(first: conv1\.weight"):
        load_weights_into(_model("plain20", width=0.25), state)


def test_weights_with_nan() -> None:
    model = _model("plain20")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.bias"][0] = float("nan")
    with pytest.raises(AmcError, match=exactly("weights hold NaN or inf values (first: fc.bias)")):
        load_weights_into(model, state)


def test_a_failed_load_leaves_the_model_untouched() -> None:
    model, reference = _model("plain20", seed=0), _model("plain20", seed=0)
    state = _model("plain20", seed=1).state_dict()
    del state["fc.bias"]
    with pytest.raises(AmcError, match=r"1 missing keys \(first: fc\.bias\)"):
        load_weights_into(model, state)
    assert _same_outputs(model, reference)


# --------------------------------------------------------------------------- atomic writes

def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "sub" / "a.bin", b"one")
    atomic_write_bytes(tmp_path / "sub" / "a.bin", b"two")
    atomic_write_json(tmp_path / "sub" / "b.json", {"x": 1})
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.bin", "b.json"]
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"two"


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]
    assert read_json(target) == {"ok": True}


def test_importing_checkpoint_leaves_the_umask_alone(tmp_path: Path) -> None:
    # a fresh interpreter, so the import really runs; it also writes a file under that umask
    code = ("import os, sys; os.umask(0o027); import amc.checkpoint as c; "
            "print(oct(os.umask(0o027))); c.atomic_write_bytes(sys.argv[1], b'x'); "
            "print(oct(os.stat(sys.argv[1]).st_mode & 0o777))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.bin")], env=SUBPROCESS_ENV,
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0o27", "0o640"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_atomic_write_gets_the_permissions_of_a_plain_open(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"one")
        atomic_write_bytes(tmp_path / "a.bin", b"two")  # replacing an existing file too
        atomic_write_json(tmp_path / "b.json", {"x": 1})
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    for name in ("a.bin", "b.json", "plain"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


SHIPPED = WEIGHTS_DIR / "fashion-mnist" / "plain20.safetensors"


def test_a_checkpoint_names_the_shipped_base_by_its_place_in_the_package(tmp_path: Path) -> None:
    assert base_weights_entry(SHIPPED) == {"weights": str(SHIPPED.resolve()),
                                           "shipped": "fashion-mnist/plain20.safetensors"}
    own = tmp_path / "base.safetensors"
    own.write_bytes(b"")
    assert base_weights_entry(own) == {"weights": str(own.resolve())}
    assert base_weights_entry(None) == {"weights": None}


def test_a_checkpoint_from_another_install_finds_the_shipped_base_here(tmp_path: Path) -> None:
    elsewhere = "/other/clone/amc/weights/fashion-mnist/plain20.safetensors"
    # written by this version, and by older ones that recorded only the path
    assert find_base_weights({"weights": elsewhere, "shipped": "fashion-mnist/plain20.safetensors"}) == SHIPPED
    assert find_base_weights({"weights": elsewhere}) == SHIPPED
    own = tmp_path / "base.safetensors"
    own.write_bytes(b"")
    assert find_base_weights({"weights": str(own)}) == own  # the recorded path first
    assert find_base_weights({"weights": str(tmp_path / "gone.safetensors")}) is None
    assert find_base_weights({"weights": "/other/amc/weights/fashion-mnist/none.safetensors"}) is None
    assert find_base_weights({"weights": None, "shipped": "../checkpoint.py"}) is None  # stays in the package
    assert find_base_weights({}) is None
