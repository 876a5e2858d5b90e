"""Datasets, the seeded reward/train split, normalisation and augmentation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import amc.data
from amc.data import DEBIAN_FASHION_MNIST, ImageSet, load_splits
from amc.errors import AmcError

from helpers import TINY_TEST, TINY_TRAIN, exactly, stamped_index, write_idx

RECORD_KEYS = {"dataset", "split_seed", "reward_set_size", "train_size", "test_size",
               "reward_indices_sha256", "mean", "std"}


def test_splits_are_deterministic_given_the_seed(tiny_data_dir: Path) -> None:
    a = load_splits(data_dir=str(tiny_data_dir), seed=3, reward_set_size=100)
    b = load_splits(data_dir=str(tiny_data_dir), seed=3, reward_set_size=100)
    c = load_splits(data_dir=str(tiny_data_dir), seed=4, reward_set_size=100)
    assert a.record == b.record
    assert torch.equal(a.reward.images, b.reward.images) and torch.equal(a.train.labels, b.train.labels)
    assert a.record["reward_indices_sha256"] != c.record["reward_indices_sha256"]
    assert not torch.equal(stamped_index(a.reward.images), stamped_index(c.reward.images))


def test_reward_and_train_partition_the_training_split(tiny_data_dir: Path) -> None:
    s = load_splits(data_dir=str(tiny_data_dir), seed=0, reward_set_size=123)
    reward, train = set(stamped_index(s.reward.images).tolist()), set(stamped_index(s.train.images).tolist())
    assert len(s.reward) == len(reward) == 123
    assert len(s.train) == len(train) == TINY_TRAIN - 123
    assert not reward & train
    assert reward | train == set(range(TINY_TRAIN))
    assert len(s.test) == TINY_TEST
    # images keep their labels through the split (the fixture labels image i with i % 10)
    assert torch.equal(s.reward.labels, stamped_index(s.reward.images) % 10)


def test_record_describes_the_split(tiny_data_dir: Path) -> None:
    s = load_splits(data_dir=str(tiny_data_dir), seed=7, reward_set_size=200)
    assert set(s.record) == RECORD_KEYS
    assert s.record["split_seed"] == 7 and s.record["reward_set_size"] == 200
    assert s.record["train_size"] == TINY_TRAIN - 200 and s.record["test_size"] == TINY_TEST
    assert len(s.record["reward_indices_sha256"]) == 64


def test_calibration_batches_come_from_the_train_part(tiny_data_dir: Path) -> None:
    s = load_splits(data_dir=str(tiny_data_dir), reward_set_size=500)
    batches = s.calibration_batches(n_batches=3, batch_size=16, seed=0)
    assert [tuple(b.shape) for b in batches] == [(16, 1, 28, 28)] * 3
    train_pixels = {tuple(r) for r in s.train.normalize(s.train.images).flatten(1)[:, :2].tolist()}
    assert all(tuple(r) in train_pixels for b in batches for r in b.flatten(1)[:, :2].tolist())


@pytest.mark.parametrize("size", [0, -1, TINY_TRAIN])
def test_reward_set_size_out_of_range(tiny_data_dir: Path, size: int) -> None:
    with pytest.raises(AmcError, match=exactly(f"--reward-set-size must be in [1, {TINY_TRAIN - 1}], got {size}")):
        load_splits(data_dir=str(tiny_data_dir), reward_set_size=size)


def test_unknown_dataset() -> None:
    with pytest.raises(AmcError, match=exactly("unknown dataset 'mnist'; choose fashion-mnist, cifar10 or imagefolder:PATH")):
        load_splits("mnist")


# --------------------------------------------------------------------------- normalisation

def test_fashion_mnist_default_normalisation(tiny_data_dir: Path) -> None:
    s = load_splits(data_dir=str(tiny_data_dir), reward_set_size=100)
    assert s.info.mean == (0.2860,) and s.info.std == (0.3530,)
    assert s.record["mean"] == [0.2860] and s.record["std"] == [0.3530]
    x, _ = s.test.tensors()
    expected = (s.test.images.float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(x, expected)


def test_mean_and_std_override(tiny_data_dir: Path) -> None:
    s = load_splits(data_dir=str(tiny_data_dir), reward_set_size=100, mean=[0.5], std=[0.25])
    assert s.info.mean == (0.5,) and s.info.std == (0.25,) and s.record["mean"] == [0.5]
    for part in (s.train, s.reward, s.test):
        x, _ = part.tensors()
        torch.testing.assert_close(x, (part.images.float() / 255 - 0.5) / 0.25)


@pytest.mark.parametrize("mean,std,message", [
    (None, [0.0], "--std values must be positive finite numbers"),
    (None, [float("inf")], "--std values must be positive finite numbers"),
    (None, [float("nan")], "--std values must be positive finite numbers"),
    ([float("nan")], None, "--mean values must be finite numbers"),
    ([0.1, 0.2], None, "--mean/--std need 1 or 1 values"),
])
def test_bad_mean_or_std(tiny_data_dir: Path, mean, std, message: str) -> None:
    with pytest.raises(AmcError, match=exactly(message)):
        load_splits(data_dir=str(tiny_data_dir), reward_set_size=100, mean=mean, std=std)


# --------------------------------------------------------------------------- augmentation

def test_augmentation_keeps_shape_dtype_and_labels() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(64)
    data = ImageSet(images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_padding=4)
    plain = list(data.batches(16))
    augmented = list(data.batches(16, augment=True, seed=1))
    assert len(plain) == len(augmented) == 4
    for (xp, yp), (xa, ya) in zip(plain, augmented):
        assert xa.shape == xp.shape == (16, 3, 32, 32)
        assert xa.dtype == xp.dtype == torch.float32
        assert torch.equal(ya, yp)
    assert not all(torch.equal(xp, xa) for (xp, _), (xa, _) in zip(plain, augmented))
    # the same seed draws the same crops and flips
    again = list(data.batches(16, augment=True, seed=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(augmented, again))


def test_shuffled_batches_cover_every_image_once() -> None:
    data = ImageSet(torch.zeros(50, 1, 4, 4, dtype=torch.uint8), torch.arange(50), (0.0,), (1.0,))
    seen = torch.cat([y for _, y in data.batches(16, shuffle=True, seed=3)])
    assert sorted(seen.tolist()) == list(range(50)) and not torch.equal(seen, torch.arange(50))


# --------------------------------------------------------------------------- finding the data

@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_data_dir_with_the_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for f in DEBIAN_FASHION_MNIST.iterdir():
        (tmp_path / f.name).symlink_to(f)
    # with the system copy hidden, the data can only come from --data-dir
    monkeypatch.setattr(amc.data, "DEBIAN_FASHION_MNIST", tmp_path / "missing")
    monkeypatch.delenv("AMC_DATA", raising=False)
    s = load_splits(data_dir=str(tmp_path), seed=0, reward_set_size=5000)
    assert (len(s.train), len(s.reward), len(s.test)) == (55000, 5000, 10000)
    assert s.train.shape == (1, 28, 28) and s.train.images.dtype == torch.uint8
    assert set(s.test.labels.tolist()) == set(range(10))
    assert s.info.num_classes == 10 and s.info.in_channels == 1


def test_amc_data_env_var_is_searched(tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMC_DATA", str(tiny_data_dir))
    monkeypatch.setattr(amc.data, "DEBIAN_FASHION_MNIST", tiny_data_dir / "missing")
    assert len(load_splits(reward_set_size=100).test) == TINY_TEST


NOT_FOUND = ("Fashion-MNIST not found and could not be downloaded ({reason}); install Debian's package "
             "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --data-dir with the idx files")


def test_missing_data_names_both_ways_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    tries = []

    def no_network(root: str, *args, **kwargs):
        tries.append(root)
        raise ConnectionError("network is unreachable")

    (tmp_path / "env").mkdir()
    (tmp_path / "dir").mkdir()
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    monkeypatch.setattr(amc.data, "DEBIAN_FASHION_MNIST", tmp_path / "missing")
    monkeypatch.setenv("AMC_DATA", str(tmp_path / "env"))
    monkeypatch.delenv("AMC_OFFLINE", raising=False)
    with pytest.raises(AmcError, match=exactly(NOT_FOUND.format(reason="ConnectionError: network is unreachable"))):
        load_splits(data_dir=str(tmp_path / "dir"))
    assert tries == [str(tmp_path / "dir")]  # the download goes into --data-dir


def test_offline_and_no_system_data_switches(tiny_data_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def fail(*args, **kwargs):
        raise AssertionError("AMC_OFFLINE must not try to download")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fail)
    monkeypatch.setattr(amc.data, "DEBIAN_FASHION_MNIST", tiny_data_dir)
    monkeypatch.setenv("AMC_OFFLINE", "1")
    monkeypatch.delenv("AMC_DATA", raising=False)
    assert len(load_splits(data_dir=str(tmp_path), reward_set_size=100).test) == TINY_TEST
    monkeypatch.setenv("AMC_NO_SYSTEM_DATA", "1")
    with pytest.raises(AmcError, match=exactly(NOT_FOUND.format(reason="ConnectionError: AMC_OFFLINE is set"))):
        load_splits(data_dir=str(tmp_path))


@pytest.mark.parametrize("damage", ["truncated-gz", "truncated-raw", "label-count"])
def test_damaged_idx_files(tiny_data_dir: Path, tmp_path: Path, damage: str) -> None:
    import gzip

    for f in tiny_data_dir.iterdir():
        data = gzip.decompress(f.read_bytes())
        if damage == "truncated-gz" and f.name.startswith("train-images"):
            (tmp_path / f.name).write_bytes(f.read_bytes()[:1000])
        elif damage == "truncated-raw" and f.name.startswith("train-images"):
            (tmp_path / f.name.removesuffix(".gz")).write_bytes(data[:1000])
        elif damage == "label-count" and f.name.startswith("train-labels"):
            write_idx(tmp_path / f.name, np.zeros(TINY_TRAIN - 1, dtype=np.uint8))
        else:
            (tmp_path / f.name).symlink_to(f)
    message = (f"corrupt Fashion-MNIST under {tmp_path}: {TINY_TRAIN} images but {TINY_TRAIN - 1} labels"
               if damage == "label-count" else None)
    with pytest.raises(AmcError, match=exactly(message) if message else "^corrupt dataset file .*train-images"):
        load_splits(data_dir=str(tmp_path))
