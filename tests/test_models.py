"""The model zoo, torchvision specs and user factories (``file.py:factory``)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from amc.errors import AmcError
from amc.flops import count_macs, count_params, flop_counter_flops
from amc.models import ZOO, ModelSpec, build_model, is_zoo

from helpers import TINY_NET, exactly

ZOO_NAMES = ["plain20", "resnet20", "resnet56", "vgg16", "mobilenet", "mobilenetv2", "shufflenetv2", "shufflenetv1"]


def test_zoo_lists_the_paper_models() -> None:
    assert sorted(ZOO) == sorted(ZOO_NAMES)
    assert all(is_zoo(n) for n in ZOO_NAMES) and not is_zoo("tv:resnet18")


@pytest.mark.parametrize("name", ZOO_NAMES)
@pytest.mark.parametrize("in_channels,size,num_classes", [(1, 28, 10), (3, 32, 7)])
def test_zoo_model_gives_batch_by_classes(name: str, in_channels: int, size: int, num_classes: int) -> None:
    model = build_model(ModelSpec(name, in_channels, num_classes, width=0.25)).eval()
    with torch.no_grad():
        out = model(torch.randn(3, in_channels, size, size))
    assert out.shape == (3, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_width_multiplier_changes_params(name: str) -> None:
    small = count_params(build_model(ModelSpec(name, 1, 10, width=0.25)))
    large = count_params(build_model(ModelSpec(name, 1, 10, width=0.5)))
    assert small < large


@pytest.mark.parametrize("width", [0.0, -1.0, 5.0])
def test_width_out_of_range_is_refused(width: float) -> None:
    with pytest.raises(AmcError, match=r"width must be in \(0, 4\]"):
        build_model(ModelSpec("plain20", 1, 10, width=width))


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v2"])
def test_torchvision_model_takes_grey_images(name: str) -> None:
    model = build_model(ModelSpec(name, in_channels=1, num_classes=10)).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_width_is_refused_for_non_zoo_models() -> None:
    with pytest.raises(AmcError, match=exactly("--width applies to zoo models only, not to tv:resnet18")):
        build_model(ModelSpec("tv:resnet18", 1, 10, width=0.5))


def test_unknown_model_names_are_amc_errors() -> None:
    with pytest.raises(AmcError, match=exactly("unknown model 'resnet21'; choose one of mobilenet, mobilenetv2, "
                                               "plain20, resnet20, resnet56, shufflenetv1, shufflenetv2, vgg16, tv:NAME or path/to/file.py:factory")):
        build_model(ModelSpec("resnet21"))
    with pytest.raises(AmcError, match=exactly("unknown torchvision model 'resnet19'")):
        build_model(ModelSpec("tv:resnet19"))


# --------------------------------------------------------------------------- user factories

def test_factory_builds_the_user_model() -> None:
    model = build_model(ModelSpec(f"{TINY_NET}:factory", 1, 10))
    assert isinstance(model, nn.Sequential)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_factory_in_a_temp_file(tmp_path: Path) -> None:
    src = tmp_path / "my_net.py"
    src.write_text("from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    model = build_model(ModelSpec(f"{src}:make", 1, 10))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_factory_that_raises_is_named_in_the_error() -> None:
    with pytest.raises(AmcError, match=exactly(f"model factory {TINY_NET}:boom raised RuntimeError: boom")):
        build_model(ModelSpec(f"{TINY_NET}:boom"))


def test_factory_returning_a_non_module() -> None:
    with pytest.raises(AmcError, match=exactly(f"model factory {TINY_NET}:not_a_module returned int, not an nn.Module")):
        build_model(ModelSpec(f"{TINY_NET}:not_a_module"))


@pytest.mark.parametrize("fname", ["missing", "NOT_CALLABLE"])
def test_factory_name_must_be_a_callable(fname: str) -> None:
    with pytest.raises(AmcError, match=exactly(f"{TINY_NET} has no callable named '{fname}'")):
        build_model(ModelSpec(f"{TINY_NET}:{fname}"))


def test_factory_file_missing(tmp_path: Path) -> None:
    with pytest.raises(AmcError, match=exactly(f"model file not found: {tmp_path}/nope.py")):
        build_model(ModelSpec(f"{tmp_path}/nope.py:factory"))


def test_factory_file_that_fails_to_import(tmp_path: Path) -> None:
    src = tmp_path / "broken.py"
    src.write_text("import torch\nraise ImportError('no such backend')\n")
    with pytest.raises(AmcError, match=exactly(f"could not import {src}: ImportError: no such backend")):
        build_model(ModelSpec(f"{src}:factory"))


def test_model_spec_round_trips_and_rejects_garbage() -> None:
    spec = ModelSpec("resnet20", 1, 10, 0.5)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    for bad in ({}, {"name": "plain20", "width": "wide"}, ["plain20"]):
        with pytest.raises(AmcError, match="invalid model spec in checkpoint"):
            ModelSpec.from_dict(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- FLOPs

@pytest.mark.parametrize("name,width", [(n, w) for n in ZOO_NAMES for w in (0.25, 0.5)]
                         + [("tv:resnet18", 1.0), ("tv:mobilenet_v2", 1.0), (f"{TINY_NET}:factory", 1.0)])
def test_macs_are_half_of_flop_counter_flops(name: str, width: float) -> None:
    model = build_model(ModelSpec(name, 1, 10, width))
    assert 2 * count_macs(model, (1, 28, 28)) == flop_counter_flops(model, (1, 28, 28))


def test_macs_of_a_known_layer() -> None:
    # 3x3 conv, 2 -> 4 channels, 8x8 output: 2*4*9*64 MACs; linear 4 -> 3: 12 MACs
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    assert count_macs(model, (2, 8, 8)) == 2 * 4 * 9 * 64 + 12


def test_count_macs_keeps_training_mode() -> None:
    model = build_model(ModelSpec("plain20", 1, 10, 0.25)).train()
    count_macs(model, (1, 28, 28))
    assert model.training
