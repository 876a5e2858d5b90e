"""PruneSpec: one typed description of a pruning problem.

The model and its weights, the dataset and its split, the pruner's options and the budget,
each field with its default and its help text, once. Every command that prunes (``prune``,
``search``, ``report``, ``export --run``, ``bench``) builds a PruneSpec; the command-line
options are generated from these fields (:mod:`amc.options`); :meth:`PruneSpec.to_dict` and
:meth:`PruneSpec.from_dict` are the only writer and reader of the spec part of a search's
``config.json``, of a checkpoint's ``model.json`` and of the bench summaries; and
:meth:`PruneSpec.build` is the one set-up path: data, base model, pruner with its
calibration cache.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from amc.errors import AmcError, warn_once
from amc.options import MAX_SEED, option, seed_int

# which commands show which options: prune takes model, data and pruner; search and bench add budget
MODEL, DATA, PRUNER, BUDGET, LATENCY = "model", "data", "pruner", "budget", "latency"
RESOURCES = ("flops", "params", "latency")
RUNTIMES = ("torch", "ort")
DATA_CRITERIA = ("greedy-ls",)
"""Channel criteria that rank by the calibration data (:mod:`amc.greedy_selection`): with reconstruction only."""
RECORDED = ("model", "dataset", "reward_set_size", "split_seed", "coupled", "criterion", "channel_round",
            "reconstruct", "calib_batches", "calib_batch_size", "points_per_image", "seed")
"""The settings every spec record has held since the first release."""
BEFORE_RECORDED = {"fill_budget": False}
"""What a record meant by a setting it predates, where that is not today's default."""


@dataclass
class PruneSpec:
    """What is pruned, on which data, how, and to which budget."""

    # --- the model
    model: str = option("plain20", "zoo name (plain20, resnet20, resnet56, vgg16, mobilenet, mobilenetv2, shufflenetv2, shufflenetv1), tv:NAME "
                        "for a torchvision model, or path/to/file.py:factory", group=MODEL)
    weights: str | None = option(None, ".safetensors or .pt state_dict; zoo models default to the shipped weights",
                                 group=MODEL)
    width: float | None = option(None, "width multiplier of a zoo model (none: that of the shipped weights, "
                                       "else 1.0)", group=MODEL, lo=0, lo_open=True, hi=4)
    # --- the data and its split
    dataset: str = option("fashion-mnist", "fashion-mnist, cifar10 or imagefolder:PATH", group=DATA)
    data_dir: str | None = option(None, "where the data lies (else $AMC_DATA, /usr/share/datasets/fashion-mnist, "
                                        "then a download)", group=DATA)
    mean: list[float] | None = option(None, "override the per-channel normalisation mean", group=DATA, type=float,
                                      nargs="+", what="a finite number")
    std: list[float] | None = option(None, "override the per-channel normalisation std", group=DATA, type=float,
                                     nargs="+", lo=0, lo_open=True, what="a positive finite number")
    image_size: int = option(224, "image size of imagefolder: datasets", group=DATA)
    reward_set_size: int = option(5000, "training images held out as the reward set, for rewards and model "
                                        "selection (docs/method.md#data-splits)", group=DATA, lo=1)
    split_seed: int = option(0, "seed of the reward-set split (keep the base model's)", group=DATA, type=seed_int)
    allow_train_overlap: bool = option(False, "score on a reward set that holds images the base model was trained "
                                              "on (refused otherwise; recorded in the outputs)", group=DATA)
    # --- the pruner
    coupled: str = option("skip", "residual-tied channels: leave alone (skip) or prune each set with one shared "
                                  "ratio (shared)", group=PRUNER, choices=("skip", "shared"))
    criterion: str = option("l1", "channel selection: l1 (the consumer's weights; AMC's), l1-producer, or greedy-ls "
                                  "(drop first the channel whose loss the least-squares refit repairs best, "
                                  "from the calibration data)", group=PRUNER)
    channel_round: int = option(1, "keep a multiple of this many channels (8 suits CPU kernels and ImageNet nets)",
                                group=PRUNER)
    reconstruct: bool = option(True, "skip the least-squares refit of the pruned layers", group=PRUNER)
    calib_batches: int = option(60, "calibration batches of training images for the refit (official: 60)",
                                group=PRUNER)
    calib_batch_size: int = option(50, "images per calibration batch (official: 50)", group=PRUNER)
    points_per_image: int = option(10, "sampled output positions per calibration image (official: 10)",
                                   group=PRUNER)
    max_cache_mb: float | None = option(2048, "refuse to start when the least-squares cache (8*d*(d+n) bytes per "
                                              "layer, d inputs and n outputs) would exceed this many MiB",
                                        group=PRUNER, metavar="MIB")
    bn_recal: int = option(0, "re-estimate the BatchNorm statistics of each pruned model on N calibration batches "
                              "before scoring it (adaptive BN, EagleEye); 0: off", group=PRUNER, metavar="N")
    seed: int = option(0, "seed of the calibration sampling (a search seeds everything else with it too)",
                       group=PRUNER, type=seed_int)
    # --- the budget
    budget: str = option("flops", "resource the action wall constrains (latency: as predicted by a table measured "
                                  "in --runtime; see amc latency)", group=BUDGET, choices=RESOURCES)
    target: float = option(0.5, "the budget: the fraction of the resource to keep, in (0, 1] (0.5 of the latency "
                                "asks for 2x)", group=BUDGET, flags=("--target-flops", "--target"), metavar="R")
    lbound: float = option(0.2, "smallest preserve ratio of a layer (official: 0.2)", group=BUDGET)
    # --- the latency target (docs/method.md#action-and-the-budget-wall)
    runtime: str = option("torch", "runtime the latency is measured in: torch (eager, CPU, channels-last) or ort "
                                   "(onnxruntime's CPU provider)", group=LATENCY, choices=RUNTIMES)
    latency_batch: int = option(64, "batch size of the latency target", group=LATENCY)
    latency_threads: int = option(1, "CPU threads of the latency target", group=LATENCY)
    cache_dir: str | None = option(None, "where latency tables are cached (else $AMC_CACHE_DIR, "
                                         "$XDG_CACHE_HOME/amc, ~/.cache/amc)", group=LATENCY)
    fill_budget: bool = option(True, "a lower action wall too, so every episode ends at the budget (our extension, "
                                     "chosen by the quality benchmark; --no-fill-budget: the paper's wall, which "
                                     "only caps)", group=BUDGET, negatable=True)

    # ------------------------------------------------------------------ checks and records

    def validate(self) -> "PruneSpec":
        """Raise one readable AmcError for the first bad value; returns self."""
        if not isinstance(self.model, str) or not self.model:
            raise AmcError(f"model must be a non-empty string, got {self.model!r}")
        for name in ("seed", "split_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEED:
                raise AmcError(f"--{name.replace('_', '-')} must be an integer in [0, {MAX_SEED}], got {v}")
        for name in ("image_size", "channel_round", "calib_batches", "calib_batch_size", "points_per_image"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AmcError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if isinstance(self.bn_recal, bool) or not isinstance(self.bn_recal, int) or self.bn_recal < 0:
            raise AmcError(f"--bn-recal must be >= 0, got {self.bn_recal}")
        if self.criterion in DATA_CRITERIA and not self.reconstruct:
            raise AmcError(f"--criterion {self.criterion} ranks channels by the calibration data: it needs "
                           "reconstruction (drop --no-reconstruct, or choose l1)")
        if self.coupled not in ("skip", "shared"):
            raise AmcError(f"coupled must be 'skip' or 'shared', got {self.coupled!r}")
        if self.max_cache_mb is not None and not (_finite(self.max_cache_mb) and self.max_cache_mb > 0):
            raise AmcError(f"--max-cache-mb must be a positive number, got {self.max_cache_mb}")
        if self.budget not in RESOURCES:
            raise AmcError(f"--budget must be {' or '.join(RESOURCES)}, got {self.budget!r}")
        if self.runtime not in RUNTIMES:
            raise AmcError(f"--runtime must be {' or '.join(RUNTIMES)}, got {self.runtime!r}")
        for name in ("latency_batch", "latency_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AmcError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if not (_finite(self.target) and 0.0 < self.target <= 1.0):
            raise AmcError(f"--target-flops must be in (0, 1], got {self.target}")
        if not (_finite(self.lbound) and 0.0 < self.lbound <= 1.0):
            raise AmcError(f"--lbound must be in (0, 1], got {self.lbound}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON values (the layout ``config.json`` has held since the first release)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "spec", writer: str = "amc search") -> "PruneSpec":
        """The spec recorded in ``d`` by ``writer``, validated.

        Every record holds the settings that decide the pruned model (:data:`RECORDED`), and
        one that lacks any is refused: a default there would silently prune another model.
        Settings added since (``max_cache_mb``, ...) take their defaults when an older record
        lacks them, except where the default changed since (:data:`BEFORE_RECORDED`: a record
        without ``fill_budget`` had the paper's wall). ``d`` may hold other keys (a search's
        config holds the agent's settings beside the spec); the caller decides about those. A
        value of the wrong kind is refused, never half-read.
        """
        if not isinstance(d, dict):
            raise AmcError(f"{source} lacks the pruning settings (a JSON object)")
        missing = [k for k in RECORDED if k not in d]
        if missing:
            raise AmcError(f"{source} lacks {', '.join(missing)}; was it written by {writer}?")
        mine = {f.name for f in dataclasses.fields(cls)}
        try:
            spec = cls(**{**BEFORE_RECORDED, **{k: v for k, v in d.items() if k in mine}})
        except TypeError as e:
            raise AmcError(f"{source}: {e}") from e
        for f in dataclasses.fields(cls):
            _check_kind(f, getattr(spec, f.name), source)
        try:
            return spec.validate()
        except AmcError as e:
            raise AmcError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> "PruneSpec":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the one set-up path

    def load_splits(self):
        """The dataset's training part, reward set and test set (:class:`amc.data.DataSplits`)."""
        from amc.data import load_splits

        return load_splits(self.dataset, self.data_dir, self.split_seed, self.reward_set_size, self.mean,
                           self.std, self.image_size)

    def load_model(self, splits, require_weights: bool = True):
        """The base model for ``splits``' data, its :class:`~amc.models.ModelSpec` and its weights file."""
        from amc.loading import resolve_model

        return resolve_model(self.model, self.weights, splits.info, self.width, require_weights)

    def build(self, progress: bool = False, calibrate: bool | None = None, latency: bool | None = None):
        """Load the data and the base model, and build the pruner with its calibration cache.

        Args:
            progress: show the calibration progress bar.
            calibrate: draw calibration batches and cache the least-squares statistics
                (default: when ``reconstruct`` is on).
            latency: build (or load from the cache) the latency table of the latency target
                (default: when ``budget`` is latency).

        Returns:
            a :class:`amc.problem.Problem`.
        """
        from amc.problem import Problem
        from amc.pruner import ChannelPruner

        self.validate()
        splits = self.load_splits()
        model, model_spec, weights = self.load_model(splits)
        from amc.overlap import check_reward_set

        check_reward_set(splits, weights, self.allow_train_overlap)  # no score on the model's training images
        model = model.cpu().eval()
        calibrate = self.reconstruct if calibrate is None else calibrate
        calibration = splits.calibration_batches(self.calib_batches, self.calib_batch_size, self.seed) \
            if calibrate else None
        limit = None if self.max_cache_mb is None else int(self.max_cache_mb * 2**20)
        # without calibration only the counts are used (timing, tables): any criterion's order will do
        counts_only = calibration is None and self.criterion in DATA_CRITERIA
        criterion = "l1" if counts_only else self.criterion
        pruner = ChannelPruner(model, splits.train.shape, calibration, coupled=self.coupled,
                               criterion=criterion, points_per_image=self.points_per_image, seed=self.seed,
                               progress=progress, max_cache_bytes=limit)
        if self.budget == "latency" if latency is None else latency:
            pruner.use_latency(self.latency_model(pruner, progress))
        # adaptive BN: its own draw of calibration images, made once (docs/method.md#channel-selection-and-reconstruction)
        bn = splits.bn_batches(self.bn_recal, self.calib_batch_size, self.seed) if self.bn_recal else []
        return Problem(self, pruner, splits, model_spec, weights, bn)


    def latency_model(self, pruner, progress: bool = False, rebuild: bool = False):
        """The latency table of this spec's target for ``pruner``'s model (cached on disk;
        ``rebuild`` measures it again), calibrated on the base and slim models of ``pruner``."""
        from amc.latency_measure import build_latency_model

        if self.runtime == "ort" and self.channel_round % 8:
            # measured on the Xeon (README, "Latency-constrained AMC"); the blocks alone do not show it
            warn_once(f"--runtime ort with --channel-round {self.channel_round}: onnxruntime runs a network whose "
                      "channel counts are not multiples of 8 much slower than its per-layer table predicts "
                      "(mobilenetv2 0.5 at batch 1: policies predicted at 0.50 and 0.66 of the base measured "
                      "1.39 and 1.73, slower than the base); --channel-round 8 avoids it")
        return build_latency_model(pruner.model, pruner.graph, pruner.input_shape, self.runtime, self.latency_batch,
                                   self.latency_threads, self.channel_round, cache_dir=self.cache_dir,
                                   rebuild=rebuild, progress=progress,
                                   slim=lambda counts: pruner.prune(counts, reconstruct=False))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_kind(f: dataclasses.Field, v: Any, source: str) -> None:
    """A recorded value must have its field's kind (an int where an int belongs, and so on)."""
    text = str(f.type)
    ok = (v is None and "None" in text) or (
        isinstance(v, bool) if text == "bool" else
        isinstance(v, str) if text.startswith("str") else
        (isinstance(v, int) and not isinstance(v, bool)) if text.startswith("int") else
        _finite(v) if text.startswith("float") else
        isinstance(v, list) and all(_finite(x) for x in v) if text.startswith("list") else True)
    if not ok:
        raise AmcError(f"{source}: {f.name} has the wrong kind of value: {v!r}")
