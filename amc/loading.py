"""Turn user arguments (model spec, weights, dataset) into a ready model, with clear errors."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from amc.checkpoint import load_state_dict, load_weights_into, read_json, shipped_weights
from amc.data import DatasetInfo
from amc.errors import AmcError
from amc.models import ModelSpec, build_model, is_zoo


def resolve_model(model: str, weights: str | None, info: DatasetInfo, width: float | None = None,
                  require_weights: bool = True) -> tuple[nn.Module, ModelSpec, str | None]:
    """Build ``model`` for dataset ``info`` and load its weights.

    A zoo name without ``weights`` takes the shipped weights for that dataset (and their width).
    Returns the model, its spec and the weights path used (None for random init).
    """
    spec = ModelSpec(model, info.in_channels, info.num_classes, 1.0 if width is None else width)
    if weights is None and is_zoo(model) and require_weights:
        shipped = shipped_weights(model, info.name)
        if shipped is None:
            raise AmcError(f"no shipped weights for {model} on {info.name}; pass --weights "
                           f"(train some with: amc train --model {model} --dataset {info.name})")
        meta = read_json(shipped.with_suffix(".json"))
        spec = ModelSpec.from_dict({**meta["model"], "name": model})
        weights = str(shipped)
    net = build_model(spec)
    if weights is not None:
        load_weights_into(net, load_state_dict(weights), source=f"weights {Path(weights).name}")
    check_fits(net, info)
    return net, spec, weights


def check_fits(model: nn.Module, info: DatasetInfo) -> None:
    """One forward pass on a dummy image; shape errors become a one-line message."""
    x = torch.zeros(2, info.in_channels, info.image_size, info.image_size)
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # a user's model can fail in any way on the wrong shape
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AmcError(f"images of shape ({info.in_channels}, {info.image_size}, {info.image_size}) "
                       f"from {info.name} do not fit the model: {msg}") from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise AmcError("the model must return a (batch, classes) tensor of logits")
    if out.shape[1] != info.num_classes:
        raise AmcError(f"the model has {out.shape[1]} outputs but {info.name} has {info.num_classes} classes")
