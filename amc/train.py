"""The training loop shared by ``amc train`` and ``amc finetune``.

SGD with Nesterov momentum, a cosine schedule, random-crop/flip augmentation, TensorBoard
logs, and model selection on the reward set (never on the test set).
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from amc.data import DataSplits, ImageSet
from amc.errors import AmcError
from amc.options import option, seed_int


@dataclass
class TrainConfig:
    """The training loop's settings; ``amc train`` and ``amc finetune`` generate their options from it."""

    epochs: int = option(12, "passes over the training part (training split minus the reward set)")
    batch_size: int = option(128, "images per SGD step")
    lr: float = option(0.1, "peak learning rate; a cosine schedule takes it to zero")
    momentum: float = 0.9
    """SGD (Nesterov) momentum."""
    weight_decay: float = option(5e-4, "L2 penalty on conv and linear weights")
    seed: int = option(0, "seed of shuffling and augmentation", type=seed_int)
    device: str = "cpu"
    """``cpu`` or ``cuda``."""

    def validate(self) -> "TrainConfig":
        """One readable AmcError for the first bad value; returns self."""
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise AmcError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.lr):
            raise AmcError(f"--lr must be a finite number, got {self.lr}")
        if self.lr <= 0:
            raise AmcError(f"--lr must be > 0, got {self.lr}")
        if not math.isfinite(self.weight_decay):
            raise AmcError(f"--weight-decay must be a finite number, got {self.weight_decay}")
        if self.weight_decay < 0:
            raise AmcError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        return self


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AmcError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


def evaluate(model: nn.Module, data: ImageSet, device: torch.device | str = "cpu", batch_size: int = 250) -> float:
    """Top-1 accuracy in percent of ``model`` on ``data`` (see :func:`top1`)."""
    x, y = data.tensors()
    return top1(model, x, y, device, batch_size)


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str = "cpu",
         batch_size: int = 250) -> float:
    """Top-1 accuracy in percent of ``model`` on normalised images ``x`` with labels ``y``.

    The one place accuracy is computed: the search's reward, ``amc eval``, fine-tuning. On
    CPU the model runs channels-last, which made convs about 25% faster (same outputs); the
    model is put back in the memory format and train/eval mode it came in.
    """
    device = torch.device(device)
    was_training, cpu = model.training, device.type == "cpu"
    restore = cpu and not _channels_last(model)
    model.eval()
    if cpu:  # outside inference mode, so the weights stay normal tensors that training can use
        model.to(memory_format=torch.channels_last)
    correct = torch.zeros((), dtype=torch.long, device=device)
    try:
        with torch.inference_mode():
            for i in range(0, len(y), batch_size):
                out = model(x[i:i + batch_size].to(device, non_blocking=True))
                correct += (out.argmax(1) == y[i:i + batch_size].to(device, non_blocking=True)).sum()
    finally:
        if restore:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    return 100.0 * int(correct) / max(1, len(y))


def _channels_last(model: nn.Module) -> bool:
    return any(p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())


def train(model: nn.Module, splits: DataSplits, cfg: TrainConfig, out_dir: str | Path | None = None,
          progress: bool = True) -> dict:
    """Train ``model`` in place; it ends holding the weights with the best reward-set accuracy.

    Under ``torchrun`` (an initialised process group, :mod:`amc.distributed`) every process
    draws the same global batch of ``cfg.batch_size`` images and trains on its slice of it,
    with DistributedDataParallel averaging the gradients: the steps, the learning-rate
    schedule and the images are those of one process with the same batch. BatchNorm batch
    statistics are per slice; running statistics are taken from rank 0 before each
    evaluation, so every process scores, and keeps, the same weights. Only ``out_dir``'s
    owner should pass it (rank 0).
    """
    from amc import distributed

    ranks = distributed.current()
    if cfg.batch_size < ranks.world:
        raise AmcError(f"--batch-size {cfg.batch_size} is smaller than the {ranks.world} processes sharing it")
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # about 20% faster convs on CPU
    net = model
    if ranks.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    writer = None
    if out_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(out_dir) / "tb"))
    best = {"reward_top1": -1.0, "epoch": -1}
    best_state = copy.deepcopy(model.state_dict())
    history = []
    t0 = time.time()
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        bar = tqdm(splits.train.batches(cfg.batch_size, shuffle=True, augment=True, seed=cfg.seed * 1000 + epoch),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True)
        run_loss, run_n = 0.0, 0
        for x, y in bar:
            if ranks.world > 1:  # this process's slice of the global batch
                x, y = x[ranks.rank::ranks.world], y[ranks.rank::ranks.world]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += float(loss.detach()) * len(y)
            run_n += len(y)
            step += 1
            if step % 20 == 0:
                bar.set_postfix(loss=f"{run_loss / run_n:.3f}", lr=f"{sched.get_last_lr()[0]:.4f}")
                if writer:
                    writer.add_scalar("train/loss", run_loss / run_n, step)
                    writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
        if ranks.world > 1:
            distributed.sync_buffers(model)
            run_loss, run_n = distributed.sum_all([run_loss, run_n], device)
        reward_top1 = evaluate(model, splits.reward, device)
        history.append({"epoch": epoch, "train_loss": run_loss / max(1, run_n), "reward_top1": reward_top1})
        if writer:
            writer.add_scalar("eval/reward_top1", reward_top1, epoch)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {run_loss / max(1, run_n):.4f}  "
                       f"reward-set top-1 {reward_top1:.2f}%  ({time.time() - t0:.0f}s)", file=sys.stderr)
        if reward_top1 > best["reward_top1"]:
            best = {"reward_top1": reward_top1, "epoch": epoch}
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)
    if writer:
        writer.close()
    out = {**best, "history": history, "seconds": time.time() - t0, "config": asdict(cfg)}
    if ranks.world > 1:
        out["distributed"] = {"world_size": ranks.world, "backend": torch.distributed.get_backend(),
                              "identical_weights": distributed.identical_everywhere(model)}
    return out
