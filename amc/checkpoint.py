"""Checkpoints: safetensors weights plus a JSON file, written atomically, loaded without pickle.

A checkpoint folder holds ``model.safetensors`` and ``model.json``. The JSON carries the
model spec (and, for pruned models, the per-layer channels), so the folder alone rebuilds
the model, as nanoGPT's checkpoints carry ``model_args``.
"""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import secrets
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.errors import AmcError

WEIGHTS_DIR = Path(__file__).parent / "weights"


# --------------------------------------------------------------------------- atomic writes

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, empty temporary file beside ``path``: its descriptor and name.

    Unlike ``tempfile.mkstemp`` (always 0600), it is created with mode 0666 and the OS applies
    the process umask (and any default ACL), so the file gets the permissions a plain ``open()``
    would give, without reading or changing the umask.
    """
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then ``os.replace`` it into place.

    A crash or a full disk leaves the old file (or none), never a half-written one; the
    temporary file is removed on any failure, and an OSError becomes one AmcError line.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise AmcError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_png(path: str | Path, fig: Any, dpi: float | None = None) -> None:
    """A matplotlib figure as a PNG, written as :func:`atomic_write_bytes` writes (a crash
    leaves the old picture, never half of a new one)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise AmcError(f"file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise AmcError(f"cannot read {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise AmcError(f"corrupt JSON in {path}: {e.msg} at line {e.lineno}") from e


# --------------------------------------------------------------------------- weights

def save_weights(path: str | Path, model: nn.Module) -> None:
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a ``.pt``/``.pth`` state_dict, never running pickled code."""
    path = Path(path)
    if not path.exists():
        raise AmcError(f"weights file not found: {path}")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise AmcError(f"cannot read weights file: {path}")
    if path.stat().st_size == 0:
        raise AmcError(f"weights file is empty: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise AmcError(f"corrupt or truncated safetensors file {path}: {e}") from e
    try:
        # torch warns on stderr about unusual pickle protocols; the CLI's stderr is one error line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only names the blocked GLOBAL when the pickle would build arbitrary objects
        why = ("it holds pickled objects beyond plain tensors" if "GLOBAL" in str(e)
               else "it is not a plain torch.save state_dict, or it is corrupt")
        raise AmcError(f"refusing to load {path}: {why} (only state_dicts load, with weights_only=True)") from e
    except Exception as e:  # a damaged file makes torch.load raise KeyError, IndexError, RuntimeError, ...
        raise AmcError(f"corrupt or unreadable weights file {path}: {_first_sentence(e)}") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise AmcError(f"{path} is not a state_dict of tensors")
    return obj


def _first_sentence(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(". ")[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``state`` strictly; a mismatch becomes one readable line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        parts = []
        if bad_shape:
            k = bad_shape[0]
            parts.append(f"{len(bad_shape)} shape mismatches (first: {k} is {tuple(state[k].shape)}, "
                         f"model wants {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise AmcError(f"{source} do not fit the model: " + "; ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise AmcError(f"{source} hold NaN or inf values (first: {bad[0]})")
    model.load_state_dict(state, strict=True)


def shipped_weights(model_name: str, dataset: str) -> Path | None:
    p = WEIGHTS_DIR / dataset / f"{model_name}.safetensors"
    return p if p.is_file() else None


def base_weights_entry(weights: str | Path | None) -> dict[str, str | None]:
    """How a pruned checkpoint names its base weights: the absolute path, and for the shipped
    weights also their place in the package (``"shipped": "fashion-mnist/resnet20.safetensors"``),
    so that a checkpoint copied to another clone or install still finds its base."""
    if not weights:
        return {"weights": None}
    path = Path(weights).resolve()
    entry: dict[str, str | None] = {"weights": str(path)}
    if path.is_relative_to(WEIGHTS_DIR.resolve()):
        entry["shipped"] = path.relative_to(WEIGHTS_DIR.resolve()).as_posix()
    return entry


def find_base_weights(base: dict[str, Any]) -> Path | None:
    """The base weights a checkpoint's ``base`` record names, where they are on this machine.

    The recorded path first; failing that, the shipped weights of the same name in this
    install's package (older checkpoints recorded only the path, whose tail after
    ``amc/weights/`` says the same). None when neither is a file.
    """
    weights = base.get("weights")
    if isinstance(weights, str) and Path(weights).is_file():
        return Path(weights)
    shipped = base.get("shipped")
    if not isinstance(shipped, str) and isinstance(weights, str):
        parts = Path(weights).parts
        tail = [i for i in range(len(parts) - 1) if parts[i:i + 2] == ("amc", "weights")]
        shipped = "/".join(parts[tail[-1] + 2:]) if tail else None
    if isinstance(shipped, str) and shipped and ".." not in Path(shipped).parts:
        p = WEIGHTS_DIR / shipped
        if p.is_file():
            return p
    return None


def save_checkpoint(out_dir: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write ``model.safetensors`` then ``model.json``; the JSON lands last, so a folder with a
    JSON always has complete weights."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AmcError(f"cannot write to {out}: {e.strerror or e}") from e
    save_weights(out / "model.safetensors", model)
    atomic_write_json(out / "model.json", meta)
    return out


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


_PROBE = ".amc_write_test"


def holds_files(folder: str | Path) -> bool:
    """Whether ``folder`` holds anything besides a lock file (:mod:`amc.runlock`) and the
    write probe of :func:`fresh_dir`, which a killed process may leave behind."""
    from amc.runlock import LOCK_FILE

    return any(p.name not in (LOCK_FILE, _PROBE) for p in Path(folder).iterdir())


def fresh_dir(path: str | Path, option: str = "--out", hint: str | None = None) -> Path:
    """An empty, writable output folder; an existing non-empty one is refused, so finished
    work is never overwritten. ``hint`` replaces the default advice in the refusal."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise AmcError(f"{out} exists and is not a folder")
    if out.is_dir() and holds_files(out):
        raise AmcError(hint or f"{out} already exists and is not empty; choose another {option} or delete it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / _PROBE
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise AmcError(f"cannot write to {out}: {e.strerror or e}") from e
    return out
