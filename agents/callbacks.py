"""What a search leaves behind, episode by episode: logs, the best policy, curves, a picture.

:class:`EpisodeLog` takes each finished episode's ``info`` (from the env's last step) and
writes

- ``episodes.jsonl``: one JSON object per episode (episode, reward, reward_top1, flops_ratio,
  params_ratio, ratios applied, kept channels, seconds since the start);
- ``best_policy.json``: the best policy so far, in the format ``amc prune --policy`` reads;
- TensorBoard scalars ``episode/*``, ``best/*``, ``policy/layer_NN`` and ``train/*``, and at
  the end the best policy as a text table and a bar chart (``best_policy.png`` too), like
  the per-layer preserve-ratio figures of the AMC paper;
- a tqdm bar on stderr: episode, reward, best accuracy, FLOPs ratio, ETA.

:class:`SearchCallback` feeds it from inside SB3's ``learn`` loop; the random-search
baseline calls it directly.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from amc.policy import write_policy


class EpisodeLog:
    """Records finished episodes and keeps the best one.

    Args:
        run_dir: the run folder (files land here; TensorBoard events in ``run_dir/tb``).
        pruner: the :class:`~amc.pruner.ChannelPruner` (to describe and write policies).
        episodes: the planned number of episodes (for the progress bar).
        best_extra: extra keys stored in ``best_policy.json`` (reward mode, target, ...).
        progress: show the progress bar.
    """

    def __init__(self, run_dir: str | Path, pruner: Any, episodes: int, best_extra: dict | None = None,
                 progress: bool = True) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.pruner = pruner
        self.best_extra = best_extra or {}
        self.writer = SummaryWriter(str(self.run_dir / "tb"))
        self.jsonl = open(self.run_dir / "episodes.jsonl", "a", encoding="utf-8")
        self.bar = tqdm(total=episodes, desc="search", unit="ep", disable=not progress, file=sys.stderr,
                        dynamic_ncols=True)
        self.episodes = 0
        self.best: dict[str, Any] | None = None
        self.t0 = time.perf_counter()

    def on_episode(self, info: dict[str, Any]) -> dict[str, Any]:
        """Record one finished episode from the env's final ``info``; returns its row."""
        e = self.episodes
        row = {"episode": e, "reward": float(info["reward"]), "reward_top1": float(info["reward_top1"]),
               "flops_ratio": float(info["flops_ratio"]), "params_ratio": float(info["params_ratio"]),
               "ratios": [round(float(r), 6) for r in info["ratios"]], "kept": [int(c) for c in info["counts"]],
               "seconds": round(time.perf_counter() - self.t0, 3)}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        w = self.writer
        for key in ("reward", "reward_top1", "flops_ratio", "params_ratio"):
            w.add_scalar(f"episode/{key}", row[key], e)
        if self.best is None or row["reward"] > self.best["reward"]:
            self.best = row
            write_policy(self.run_dir / "best_policy.json", self.pruner, row["kept"], reward=row["reward"],
                         reward_top1=row["reward_top1"], episode=e, **self.best_extra)
            for i, r in enumerate(row["ratios"]):
                w.add_scalar(f"policy/layer_{i:02d}", r, e)
        w.add_scalar("best/reward", self.best["reward"], e)
        w.add_scalar("best/reward_top1", self.best["reward_top1"], e)
        self.episodes += 1
        self.bar.set_postfix(reward=f"{row['reward']:.4f}", best_top1=f"{self.best['reward_top1']:.2f}%",
                             flops=f"{row['flops_ratio']:.3f}", refresh=False)
        self.bar.update(1)
        return row

    def log_losses(self, values: dict[str, float], episode: int) -> None:
        """``train/*`` values of the updates made after ``episode``."""
        for key, v in values.items():
            self.writer.add_scalar(key, float(v), episode)

    def close(self) -> None:
        """Write the best policy as a table and a bar chart, and close every file."""
        self.bar.close()
        self.jsonl.close()
        if self.best is not None:
            d = self.pruner.describe(self.best["kept"])
            rows = [f"| {i} | {l['layer']} | {l['channels']} | {l['kept']} | {l['ratio']:.3f} |"
                    for i, l in enumerate(d["layers"])]
            header = (f"best policy: episode {self.best['episode']}, reward {self.best['reward']:.4f}, "
                      f"reward-set top-1 {self.best['reward_top1']:.2f}%, FLOPs {d['flops_ratio']:.3f}, "
                      f"params {d['params_ratio']:.3f}\n\n"
                      "| step | layer | channels | kept | preserve ratio |\n|---|---|---|---|---|\n")
            self.writer.add_text("best/policy", header + "\n".join(rows), self.best["episode"])
            fig = policy_figure(d, self.best)
            fig.savefig(self.run_dir / "best_policy.png", dpi=100)
            self.writer.add_figure("best/policy", fig, self.best["episode"])  # closes the figure
        self.writer.close()


def policy_figure(described: dict, best: dict) -> Any:
    """A bar chart of the preserve ratio per prunable layer (the AMC paper's policy plots)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    layers = described["layers"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(layers) + 2), 3.2))
    ax.bar(range(len(layers)), [l["ratio"] for l in layers], color="tab:blue")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([str(i) for i in range(len(layers))], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("prunable layer (step t)")
    ax.set_ylabel("preserve ratio")
    ax.set_title(f"episode {best['episode']}: FLOPs {described['flops_ratio']:.1%}, "
                 f"reward-set top-1 {best['reward_top1']:.2f}%", fontsize=9)
    fig.tight_layout()
    return fig


class SearchCallback(BaseCallback):
    """Feeds each finished episode, and the losses of the updates before it, to an EpisodeLog."""

    # SB3 records these under train/ too; they are bookkeeping, not curves
    SKIP = ("train/n_updates", "train/learning_rate")

    def __init__(self, log: EpisodeLog) -> None:
        super().__init__()
        self.log = log

    def _losses(self) -> dict[str, float]:
        return {k: v for k, v in self.model.logger.name_to_value.items()
                if k.startswith("train/") and k not in self.SKIP}

    def _on_step(self) -> bool:
        if bool(self.locals["dones"][0]):
            # SB3 trains after each episode and dumps (clears) its logger after the next one
            if self.log.episodes > 0:
                self.log.log_losses(self._losses(), self.log.episodes - 1)
            self.log.on_episode(self.locals["infos"][0])
        return True

    def _on_training_end(self) -> None:
        if self.log.episodes > 0:
            self.log.log_losses(self._losses(), self.log.episodes - 1)
