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
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from agents.noise import TruncatedNormalNoise
from amc.checkpoint import atomic_write_bytes, atomic_write_png
from amc.errors import AmcError
from amc.policy import write_policy


class EpisodeLog:
    """Records finished episodes and keeps the best one.

    Args:
        run_dir: the run folder (files land here; TensorBoard events in ``run_dir/tb``).
        pruner: the :class:`~amc.pruner.ChannelPruner` (to describe and write policies).
        episodes: the planned number of episodes (for the progress bar).
        best_extra: extra keys stored in ``best_policy.json`` (reward mode, target, ...).
        progress: show the progress bar.
        start: :meth:`state_dict` of a stopped search, to continue it: ``episodes.jsonl`` is cut
            back to the episodes that state covers (later ones were logged after the last save
            and will run again), ``best_policy.json`` is rewritten from it, and TensorBoard
            hides any event at or after that episode (``purge_step``), so no episode shows twice.
    """

    def __init__(self, run_dir: str | Path, pruner: Any, episodes: int, best_extra: dict | None = None,
                 progress: bool = True, start: dict[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.pruner = pruner
        self.best_extra = best_extra or {}
        self.episodes = 0
        self.best: dict[str, Any] | None = None
        self.t0 = time.perf_counter()
        purge = None
        if start is not None:
            self.rollback(start)
            purge = self.episodes
            _after_existing_events(self.run_dir / "tb")
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        self.jsonl = open(self.run_dir / "episodes.jsonl", "a", encoding="utf-8")
        self.bar = tqdm(total=episodes, initial=self.episodes, desc="search", unit="ep", disable=not progress,
                        file=sys.stderr, dynamic_ncols=True)

    def state_dict(self) -> dict[str, Any]:
        """Episodes done, the best row, and the seconds spent: what a resumed log continues from."""
        return {"episodes": self.episodes, "best": None if self.best is None else dict(self.best),
                "seconds": time.perf_counter() - self.t0}

    def rollback(self, state: dict[str, Any]) -> None:
        """Make the files agree with ``state``: keep its episodes in ``episodes.jsonl`` and its
        best policy in ``best_policy.json`` (an episode may have been logged after it was saved)."""
        n = int(state["episodes"])
        path = self.run_dir / "episodes.jsonl"
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True) if path.exists() else []
        complete = [line for line in lines if line.endswith("\n")]
        if len(complete) < len(lines):
            # a process killed in the middle of appending a line: that episode was never saved
            sys.stderr.write(f"warning: {path} ends in a torn line ({len(lines[-1])} characters, no newline); "
                             "ignored\n")
        if len(complete) < n:
            raise AmcError(f"{path} holds {len(complete)} episodes but the saved search state covers {n}")
        if len(lines) != n:
            atomic_write_bytes(path, "".join(complete[:n]).encode())
        if getattr(self, "jsonl", None) is not None and not self.jsonl.closed:
            self.jsonl.close()
            self.jsonl = open(path, "a", encoding="utf-8")
        self.episodes, self.best = n, state["best"]
        self.t0 = time.perf_counter() - float(state.get("seconds", 0.0))
        if self.best is not None:
            self._write_best(self.best)
        else:
            (self.run_dir / "best_policy.json").unlink(missing_ok=True)

    def _write_best(self, row: dict[str, Any]) -> None:
        write_policy(self.run_dir / "best_policy.json", self.pruner, row["kept"], reward=row["reward"],
                     reward_top1=row["reward_top1"], episode=row["episode"], **self.best_extra)

    def flush(self) -> None:
        """Put every logged episode on disk (called before the search state is saved)."""
        self.jsonl.flush()
        os.fsync(self.jsonl.fileno())
        self.writer.flush()

    def on_episode(self, info: dict[str, Any]) -> dict[str, Any]:
        """Record one finished episode from the env's final ``info``; returns its row."""
        e = self.episodes
        row = {"episode": e, "reward": float(info["reward"]), "reward_top1": float(info["reward_top1"]),
               "flops_ratio": float(info["flops_ratio"]), "params_ratio": float(info["params_ratio"]),
               "ratios": [round(float(r), 6) for r in info["ratios"]], "kept": [int(c) for c in info["counts"]],
               "seconds": round(time.perf_counter() - self.t0, 3)}
        if "latency_ratio" in info:  # a latency table's prediction
            row["latency_ratio"] = float(info["latency_ratio"])
        if info.get("nonfinite"):
            # what the evaluation gave, as text: JSON has no NaN or inf
            row["nonfinite"] = {k: str(v) for k, v in info["nonfinite"].items()}
            tqdm.write(f"warning: episode {e}: the reward-set evaluation gave reward {row['nonfinite']['reward']}, "
                       f"top-1 {row['nonfinite']['reward_top1']}; scored as the worst reward {row['reward']:.4f}",
                       file=sys.stderr)
        try:  # one line per episode, on disk before the next begins: a kill tears at most the last line
            self.jsonl.write(json.dumps(row) + "\n")
            self.jsonl.flush()
            os.fsync(self.jsonl.fileno())
        except OSError as err:
            raise AmcError(f"cannot write {self.jsonl.name}: {err.strerror or err}") from err
        w = self.writer
        for key in ("reward", "reward_top1", "flops_ratio", "params_ratio"):
            w.add_scalar(f"episode/{key}", row[key], e)
        if self.best is None or row["reward"] > self.best["reward"]:
            self.best = row
            self._write_best(row)
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

    def close(self, final: bool = True) -> None:
        """Close every file; ``final``: first write the best policy as a table and a bar chart
        (a stopped search leaves them to the run that finishes it)."""
        self.bar.close()
        self.jsonl.close()
        if final and self.best is not None:
            d = self.pruner.describe(self.best["kept"])
            rows = [f"| {i} | {l['layer']} | {l['channels']} | {l['kept']} | {l['ratio']:.3f} |"
                    for i, l in enumerate(d["layers"])]
            header = (f"best policy: episode {self.best['episode']}, reward {self.best['reward']:.4f}, "
                      f"reward-set top-1 {self.best['reward_top1']:.2f}%, FLOPs {d['flops_ratio']:.3f}, "
                      f"params {d['params_ratio']:.3f}\n\n"
                      "| step | layer | channels | kept | preserve ratio |\n|---|---|---|---|---|\n")
            self.writer.add_text("best/policy", header + "\n".join(rows), self.best["episode"])
            fig = policy_figure(d, self.best)
            atomic_write_png(self.run_dir / "best_policy.png", fig, dpi=100)
            self.writer.add_figure("best/policy", fig, self.best["episode"])  # closes the figure
        self.writer.close()


def _after_existing_events(tb: Path) -> None:
    """Wait, if needed, until a new events file sorts after every existing one.

    TensorBoard reads a folder's events files in name order, and the name starts with the
    creation second: a resumed search's file must come after the stopped one's, or its purge
    (which hides the stopped run's events from the resumed episode on) would apply backwards.
    """
    stamps = [int(p.name.split(".")[3]) for p in tb.glob("events.out.tfevents.*")
              if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


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
    """Feeds each finished episode, and the losses of the updates after it, to an EpisodeLog.

    SB3 trains after each episode and then starts the next rollout: that start is the one
    moment where nothing is half done (no pending transitions, the update finished), so the
    losses are logged there and ``boundary`` (which saves the search state) is called there,
    and once more when training ends.

    When ``should_stop()`` turns true, learning stops before the next step is recorded: an
    unfinished episode is dropped (it is neither logged nor stored), so the last boundary's
    state is complete, and a resumed search runs that episode again.

    Args:
        log: the episode log.
        boundary: called between episodes, after the update (see :class:`agents.resume.SearchState`).
        resumed: True when the search continues from a saved state (its boundary is saved already).
        should_stop: polled at every step (a Ctrl-C handler sets it).
        sigma_scale: when given, every episode played by the actor with a
            :class:`~agents.noise.TruncatedNormalNoise` logs its sigma to TensorBoard as
            ``explore/sigma``, divided by this factor (the one the noise's sigma was multiplied
            by, so the curve is in preserve-ratio units). None logs nothing.
    """

    # SB3 records these under train/ too; they are bookkeeping, not curves
    SKIP = ("train/n_updates", "train/learning_rate")

    def __init__(self, log: EpisodeLog, boundary: Callable[[], None] | None = None, resumed: bool = False,
                 should_stop: Callable[[], bool] | None = None, sigma_scale: float | None = None) -> None:
        super().__init__()
        self.log = log
        self.sigma_scale = sigma_scale
        self.boundary = boundary
        self.should_stop = should_stop
        self._last_boundary: int | None = log.episodes if resumed else None

    def _losses(self) -> dict[str, float]:
        return {k: v for k, v in self.model.logger.name_to_value.items()
                if k.startswith("train/") and k not in self.SKIP}

    def _on_step(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            return False  # SB3 returns before storing this step
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:  # with --envs N, the N episodes of a round end together; logged in env order
                self._log_sigma(self.log.episodes, int(info.get("t", 0)) + 1)
                self.log.on_episode(info)
        return True

    def _log_sigma(self, episode: int, layers: int) -> None:
        noise = getattr(self.model, "action_noise", None)
        if not self.sigma_scale or not isinstance(noise, TruncatedNormalNoise):
            return
        if episode * layers < self.model.learning_starts:
            return  # a warm-up episode: uniform random actions, no noise
        # the sigma the episode was played with: that of its round's first episode
        self.log.writer.add_scalar("explore/sigma", noise.sigma / self.sigma_scale, episode)

    def _between_episodes(self) -> None:
        n = self.log.episodes
        if n == self._last_boundary:
            return
        if n > 0:
            # SB3 dumps (clears) its logger at each episode's end, before the update: what is
            # there now comes from the update after episode n - 1, if there was one
            self.log.log_losses(self._losses(), n - 1)
        if self.boundary is not None:
            self.boundary()
        self._last_boundary = n

    def _on_rollout_start(self) -> None:
        self._between_episodes()

    def _on_training_end(self) -> None:
        self._between_episodes()
