"""Datasets, the seeded reward/train/calibration splits, and fast in-memory batching.

Three splits, following AMC (docs/method.md#data-splits):

- the **reward set**: a fixed, seeded subset held out of the *training* split, used for the
  search's reward and for choosing checkpoints;
- the **train** part: the rest of the training split, for training and fine-tuning, and the
  source of the **calibration batches** used for reconstruction;
- the **test set**, used only for final reports.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from amc.errors import AmcError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int


KNOWN = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 10, 28, (0.2860,), (0.3530,), 2),
    "cifar10": DatasetInfo("cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageSet:
    """Images and labels with a normalisation; yields ready-to-use float batches."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], crop_padding: int = 0) -> None:
        # uint8 N x C x H x W keeps 60k Fashion-MNIST images in 45 MiB
        self.images, self.labels = images, labels
        c = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self.crop_padding = crop_padding
        self._cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: np.ndarray | torch.Tensor) -> "ImageSet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.mean.flatten().tolist(),
                        self.std.flatten().tolist(), self.crop_padding)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole set, normalised, computed once (the reward set is evaluated hundreds of times)."""
        if self._cache is None:  # channels-last: the layout CPU convs run fastest on
            self._cache = self.normalize(self.images).contiguous(memory_format=torch.channels_last)
        return self._cache, self.labels

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # random crop with zero padding and horizontal flip, batched
        b, c, h, w = x.shape
        p = self.crop_padding
        if p:
            xp = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b,), generator=g)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=g)
            rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
            x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        flip = torch.rand(b, generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        return x

    def batches(self, batch_size: int, shuffle: bool = False, augment: bool = False,
                seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        n = len(self)
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        if not augment and not shuffle:
            x_all, y_all = self.tensors()
            for i in range(0, n, batch_size):
                yield x_all[i:i + batch_size], y_all[i:i + batch_size]
            return
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            x = self.normalize(self.images[idx])
            if augment:
                x = self._augment(x, g)
            yield x, self.labels[idx]


@dataclass
class DataSplits:
    """The three splits of one dataset and a record of how they were drawn."""

    info: DatasetInfo
    train: ImageSet
    reward: ImageSet
    test: ImageSet
    record: dict = field(default_factory=dict)
    reward_index: np.ndarray | None = None
    """Which images of the dataset's training split form the reward set (sorted positions)."""

    def calibration_indices(self, n_batches: int, batch_size: int, seed: int) -> torch.Tensor:
        """Which images of :attr:`train` :meth:`calibration_batches` draws (positions in ``train``)."""
        g = torch.Generator().manual_seed(seed + 1)
        n = min(len(self.train), n_batches * batch_size)
        return torch.randperm(len(self.train), generator=g)[:n]

    def calibration_batches(self, n_batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
        """Batches of training images (never reward or test images) for reconstruction."""
        idx = self.calibration_indices(n_batches, batch_size, seed)
        x = self.train.normalize(self.train.images[idx])
        return list(x.split(batch_size))

    def bn_indices(self, n_batches: int, batch_size: int, seed: int) -> torch.Tensor:
        """Which images of :attr:`train` :meth:`bn_batches` draws (positions in ``train``).

        Drawn without replacement from the calibration part (training minus reward set),
        with a generator of its own: a different draw from :meth:`calibration_batches`'s for
        the same seed, and the same draw for the same seed every time.
        """
        if n_batches < 1 or batch_size < 1:
            raise AmcError(f"BN recalibration needs at least one batch of one image, got {n_batches} x {batch_size}")
        n = min(len(self.train), n_batches * batch_size)
        rng = np.random.default_rng([int(seed), 0xB4])  # a stream apart from default_rng(seed)
        return torch.from_numpy(rng.permutation(len(self.train))[:n].astype(np.int64))

    def bn_batches(self, n_batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
        """Normalised batches for re-estimating BatchNorm statistics (adaptive BN, see
        :mod:`amc.bn_recal`): training images only, never reward or test images, without
        augmentation (the statistics must match those of the images the model is scored on).
        Fewer than ``n_batches`` when the calibration part is smaller than requested."""
        idx = self.bn_indices(n_batches, batch_size, seed)
        x = self.train.normalize(self.train.images[idx])
        return list(x.split(batch_size))


# --------------------------------------------------------------------------- loading

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        ndim = data[3]
        dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, ValueError, IndexError, EOFError) as e:
        raise AmcError(f"corrupt dataset file {path}: {e}") from e


def _find_idx(root: Path, stem: str) -> Path | None:
    for sub in ("", "fashion-mnist", "FashionMNIST/raw"):
        for suffix in ("", ".gz"):
            p = root / sub / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


# Two switches for tests and air-gapped machines, so the "data not found" path can be exercised
# where the Debian package is installed: AMC_NO_SYSTEM_DATA=1 ignores DEBIAN_FASHION_MNIST, and
# AMC_OFFLINE=1 never tries a download (it fails with the same message as a failed download).
def _fashion_mnist_dir(data_dir: str | None) -> Path | None:
    candidates = [data_dir, os.environ.get("AMC_DATA")]
    if not _env_flag("AMC_NO_SYSTEM_DATA"):
        candidates.append(str(DEBIAN_FASHION_MNIST))
    for c in candidates:
        if c and _find_idx(Path(c), "train-images-idx3-ubyte") is not None:
            return Path(c)
    return None


def _download_root(data_dir: str | None) -> Path:
    return Path(data_dir or os.environ.get("AMC_DATA") or Path.home() / ".cache" / "amc" / "data")


def load_fashion_mnist(data_dir: str | None) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    root = _fashion_mnist_dir(data_dir)
    if root is None:
        import torchvision

        dl = _download_root(data_dir)
        try:
            if _env_flag("AMC_OFFLINE"):
                raise ConnectionError("AMC_OFFLINE is set")
            torchvision.datasets.FashionMNIST(str(dl), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(dl), train=False, download=True)
        except Exception as e:  # network errors come in many types
            reason = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e).strip() else type(e).__name__
            raise AmcError(
                f"Fashion-MNIST not found and could not be downloaded ({reason}); install Debian's package "
                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --data-dir with the idx files") from e
        root = dl
    out = []
    for split in ("train", "t10k"):
        img_p = _find_idx(root, f"{split}-images-idx3-ubyte")
        lab_p = _find_idx(root, f"{split}-labels-idx1-ubyte")
        if img_p is None or lab_p is None:
            raise AmcError(f"Fashion-MNIST files for split {split!r} missing under {root}")
        x = torch.from_numpy(_read_idx(img_p).copy()).unsqueeze(1)
        y = torch.from_numpy(_read_idx(lab_p).astype(np.int64))
        if len(x) != len(y):
            raise AmcError(f"corrupt Fashion-MNIST under {root}: {len(x)} images but {len(y)} labels")
        out.append((x, y))
    return out[0], out[1]


def load_cifar10(data_dir: str | None) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    import torchvision

    root = _download_root(data_dir)
    out = []
    for train in (True, False):
        try:
            try:
                ds = torchvision.datasets.CIFAR10(str(root), train=train, download=False)
            except RuntimeError:
                if _env_flag("AMC_OFFLINE"):
                    raise
                ds = torchvision.datasets.CIFAR10(str(root), train=train, download=True)
        except Exception as e:
            raise AmcError(f"CIFAR-10 not found under {root} and could not be downloaded "
                           f"({type(e).__name__}); pass --data-dir with cifar-10-batches-py inside") from e
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        out.append((x, torch.as_tensor(ds.targets, dtype=torch.long)))
    return out[0], out[1]


def load_imagefolder(path: str, image_size: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], int]:
    """An ImageNet-style folder: ``PATH/train/CLASS/*.jpg`` and ``PATH/val/CLASS/*`` (or ``test``).

    Images are resized and centre-cropped to ``image_size`` once and kept in memory as uint8.
    """
    import torchvision
    from torchvision import transforms

    root = Path(path)
    if not root.is_dir():
        raise AmcError(f"image folder not found: {root}")
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise AmcError(f"{root} must contain train/ and val/ (or test/) folders of class sub-folders")
    tf = transforms.Compose([transforms.Resize(int(image_size * 1.14)), transforms.CenterCrop(image_size),
                             transforms.PILToTensor()])
    out = []
    classes = None
    for d in (root / "train", val_dir):
        try:
            ds = torchvision.datasets.ImageFolder(str(d), transform=tf)
        except (FileNotFoundError, OSError) as e:
            raise AmcError(f"cannot read image folder {d}: {e}") from e
        if classes is not None and ds.classes != classes:
            raise AmcError(f"class folders differ between {root / 'train'} and {d}")
        classes = ds.classes
        xs, ys = zip(*[(ds[i][0], ds.targets[i]) for i in range(len(ds))])
        x = torch.stack([t.expand(3, -1, -1) if t.shape[0] == 1 else t[:3] for t in xs])
        out.append((x, torch.tensor(ys, dtype=torch.long)))
    return out[0], out[1], len(classes or [])


def load_splits(dataset: str = "fashion-mnist", data_dir: str | None = None, seed: int = 0,
                reward_set_size: int = 5000, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, image_size: int = 224) -> DataSplits:
    """Load ``dataset`` and draw the seeded reward set out of its training split."""
    if dataset in KNOWN:
        info = KNOWN[dataset]
        (xtr, ytr), (xte, yte) = (load_fashion_mnist if dataset == "fashion-mnist" else load_cifar10)(data_dir)
    elif dataset.startswith("imagefolder:"):
        (xtr, ytr), (xte, yte), n_cls = load_imagefolder(dataset.split(":", 1)[1], image_size)
        info = DatasetInfo(dataset, 3, n_cls, image_size, IMAGENET_MEAN, IMAGENET_STD, 0)
    else:
        raise AmcError(f"unknown dataset {dataset!r}; choose fashion-mnist, cifar10 or imagefolder:PATH")
    if mean is not None or std is not None:
        m = tuple(mean) if mean is not None else info.mean
        s = tuple(std) if std is not None else info.std
        if len(m) not in (1, info.in_channels) or len(s) not in (1, info.in_channels):
            raise AmcError(f"--mean/--std need 1 or {info.in_channels} values")
        if not all(math.isfinite(v) for v in m):
            raise AmcError("--mean values must be finite numbers")
        if not all(math.isfinite(v) and v > 0 for v in s):
            raise AmcError("--std values must be positive finite numbers")
        info = DatasetInfo(info.name, info.in_channels, info.num_classes, info.image_size,
                           m * (info.in_channels // len(m)), s * (info.in_channels // len(s)), info.crop_padding)
    n = len(ytr)
    if not (0 < reward_set_size < n):
        raise AmcError(f"--reward-set-size must be in [1, {n - 1}], got {reward_set_size}")
    reward_idx = reward_indices(n, seed, reward_set_size)
    train_idx = np.setdiff1d(np.arange(n), reward_idx, assume_unique=True)
    full = ImageSet(xtr, ytr, info.mean, info.std, info.crop_padding)
    record = {
        "dataset": dataset, "split_seed": seed, "reward_set_size": int(reward_set_size),
        "train_size": int(len(train_idx)), "test_size": int(len(yte)),
        "reward_indices_sha256": indices_sha256(reward_idx),
        "mean": list(info.mean), "std": list(info.std),
    }
    return DataSplits(info, full.subset(train_idx), full.subset(reward_idx),
                      ImageSet(xte, yte, info.mean, info.std, 0), record, reward_idx)


def reward_indices(n: int, seed: int, reward_set_size: int) -> np.ndarray:
    """The reward set's positions in a training split of ``n`` images (sorted): the first
    ``reward_set_size`` of a permutation seeded by ``seed``. The same seed and a smaller size
    give a subset; another seed gives another set."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:reward_set_size])


def indices_sha256(idx: np.ndarray) -> str:
    """The hash a split record keeps of its reward indices (``reward_indices_sha256``)."""
    return hashlib.sha256(np.asarray(idx).astype(np.int64).tobytes()).hexdigest()
