"""The model zoo and model specs.

A model spec is one of:

- a zoo name: ``plain20``, ``resnet20``, ``resnet56``, ``vgg16``, ``mobilenet``, ``mobilenetv2``,
  ``shufflenetv2``, ``shufflenetv1``;
- ``tv:NAME``: any torchvision classification model, built without downloading weights;
- ``path/to/file.py:factory``: a callable with no arguments that returns an ``nn.Module``.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from amc.errors import AmcError
from amc.models.mobilenet import mobilenet, mobilenetv2
from amc.models.resnet_cifar import plain20, resnet20, resnet56
from amc.models.shufflenet import shufflenetv1, shufflenetv2
from amc.models.vgg import vgg16

ZOO: dict[str, Callable[..., nn.Module]] = {
    "plain20": plain20,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vgg16": vgg16,
    "mobilenet": mobilenet,
    "mobilenetv2": mobilenetv2,
    "shufflenetv2": shufflenetv2,
    "shufflenetv1": shufflenetv1,
}


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's unpruned architecture (stored in checkpoints)."""

    name: str
    in_channels: int = 3
    num_classes: int = 10
    width: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        try:
            return cls(name=str(d["name"]), in_channels=int(d.get("in_channels", 3)),
                       num_classes=int(d.get("num_classes", 10)), width=float(d.get("width", 1.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise AmcError(f"invalid model spec in checkpoint: {d!r}") from e


def is_zoo(name: str) -> bool:
    return name in ZOO


def _load_factory(spec: str) -> nn.Module:
    path_str, _, fname = spec.rpartition(":")
    path = Path(path_str)
    if not path.is_file():
        raise AmcError(f"model file not found: {path}")
    mod_name = f"amc_user_model_{abs(hash(path.resolve()))}"
    try:
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    except Exception as e:  # a user's file may raise anything while importing
        sys.modules.pop(mod_name, None)
        raise AmcError(f"could not import {path}: {type(e).__name__}: {e}") from e
    factory = getattr(module, fname, None)
    if factory is None or not callable(factory):
        raise AmcError(f"{path} has no callable named {fname!r}")
    try:
        model = factory()
    except Exception as e:
        raise AmcError(f"model factory {spec} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise AmcError(f"model factory {spec} returned {type(model).__name__}, not an nn.Module")
    return model


def _build_torchvision(name: str, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as e:
        raise AmcError(f"unknown torchvision model {name!r}") from e
    kwargs = {"weights": None, "num_classes": num_classes}
    if "aux_logits" in inspect.signature(builder).parameters:
        kwargs["aux_logits"] = False
    model = builder(**kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the stem conv for one with ``in_channels`` inputs (e.g. grey-scale data)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                            m.dilation, m.groups, m.bias is not None)
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], new)
            return


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the unpruned model for ``spec``; raises :class:`AmcError` on a bad spec."""
    name = spec.name
    if name in ZOO:
        if not (0 < spec.width <= 4):
            raise AmcError(f"width must be in (0, 4], got {spec.width}")
        return ZOO[name](in_channels=spec.in_channels, num_classes=spec.num_classes, width=spec.width)
    if spec.width != 1.0 and (name.startswith("tv:") or ".py:" in name):
        raise AmcError(f"--width applies to zoo models only, not to {name}")
    if name.startswith("tv:"):
        return _build_torchvision(name[3:], spec.in_channels, spec.num_classes)
    if ".py:" in name:
        return _load_factory(name)
    known = ", ".join(sorted(ZOO))
    raise AmcError(f"unknown model {name!r}; choose one of {known}, tv:NAME or path/to/file.py:factory")


__all__ = ["ZOO", "ModelSpec", "build_model", "is_zoo"]
