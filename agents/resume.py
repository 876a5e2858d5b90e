"""The search state: what is saved between episodes so a stopped search resumes exactly.

``amc search`` saves ``RUN/state.pt`` after every episode (or every ``--save-every``), and
``amc search --resume RUN`` continues from it, episode for episode as if it had never
stopped: same actions, same rewards, same best policy (tested by killing a search with
SIGKILL and comparing with an uninterrupted one). The state holds

- the episode log's counters: episodes done, the best row, the seconds spent;
- the agent: network weights and optimizer states (SB3's own list of what to save,
  ``_get_torch_save_params``), its step, episode and update counters (TD3's delayed actor
  updates count updates), its last observation;
- the replay buffer's transitions, write position and moving baseline; the exploration
  noise's episode and generator;
- every random state: Python's, numpy's global one (SB3 samples batches with it), torch's
  (network init, SAC's policy, TD3's target noise), CUDA's when in use, the env's
  ``np_random`` and the action space's generator (warm-up actions).

It is saved at the one moment nothing is half done: after an episode's update, before the
next episode's first action. The file is written to a temporary name and ``os.replace``-d,
so a kill at any moment leaves the previous state or the new one, never a torn file.

What is pickled: ``state.pt`` is a ``torch.save`` file, i.e. a pickle, but it holds only plain
containers (dicts, lists, tuples), numbers, strings and tensors, and it is read back with
``torch.load(weights_only=True)``, whose unpickler refuses anything else: a tampered file can
fail to load, never run code. (SB3's own ``save``/``save_replay_buffer`` would cloudpickle
whole objects, which only a trusted file may be loaded from; they are not used.)
"""
from __future__ import annotations

import copy
import io
import pickle
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.save_util import recursive_getattr

from agents.noise import TruncatedNormalNoise
from amc.checkpoint import atomic_write_bytes
from amc.errors import AmcError

STATE_FILE = "state.pt"
FORMAT = 1
"""Version of the state file's layout; a different one is refused, not misread."""


# --------------------------------------------------------------------------- random states

def _generators(env: Any, agent: Any | None) -> dict[str, np.random.Generator]:
    gens = {"env": env.np_random, "action_space": env.action_space.np_random}
    if agent is not None and agent.action_space is not env.action_space:
        gens["agent_action_space"] = agent.action_space.np_random
    return gens


def rng_state(env: Any, agent: Any | None = None) -> dict[str, Any]:
    """Every random state the search draws from, as plain Python values and tensors."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    out: dict[str, Any] = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state(),
                           "generators": {k: g.bit_generator.state for k, g in _generators(env, agent).items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_state(state: dict[str, Any], env: Any, agent: Any | None = None) -> None:
    random.setstate(state["python"])
    np_state = copy.deepcopy(state["numpy"])
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    gens = _generators(env, agent)
    if set(gens) != set(state["generators"]):
        raise ValueError(f"saved generators {sorted(state['generators'])}, this search has {sorted(gens)}")
    for k, g in gens.items():
        g.bit_generator.state = state["generators"][k]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- the agent

def agent_state(agent: Any) -> dict[str, Any]:
    """A deep copy of what decides the agent's future: weights, optimizers, counters, buffer, noise."""
    names, variables = agent._get_torch_save_params()
    out: dict[str, Any] = {
        "state_dicts": {n: copy.deepcopy(recursive_getattr(agent, n).state_dict()) for n in names},
        "variables": {n: recursive_getattr(agent, n).detach().clone() for n in variables},
        "num_timesteps": int(agent.num_timesteps), "episode_num": int(agent._episode_num),
        "n_updates": int(agent._n_updates),
        "last_obs": torch.from_numpy(np.array(agent._last_obs, copy=True)),
        "last_episode_starts": torch.from_numpy(np.array(agent._last_episode_starts, copy=True)),
        "buffer": agent.replay_buffer.state_dict(), "noise": None}
    if isinstance(agent.action_noise, TruncatedNormalNoise):
        out["noise"] = agent.action_noise.state_dict()
    return out


def load_agent_state(agent: Any, state: dict[str, Any]) -> None:
    names, variables = agent._get_torch_save_params()
    if sorted(names) != sorted(state["state_dicts"]) or sorted(variables) != sorted(state["variables"]):
        raise ValueError("the saved agent is of another kind")
    for n in names:
        recursive_getattr(agent, n).load_state_dict(state["state_dicts"][n])
    with torch.no_grad():
        for n in variables:
            recursive_getattr(agent, n).copy_(state["variables"][n])
    agent.num_timesteps = state["num_timesteps"]
    agent._episode_num = state["episode_num"]
    agent._n_updates = state["n_updates"]
    agent._last_obs = state["last_obs"].numpy().copy()
    agent._last_episode_starts = state["last_episode_starts"].numpy().copy()
    agent.replay_buffer.load_state_dict(state["buffer"])
    if state["noise"] is not None:
        agent.action_noise.load_state_dict(state["noise"])


# --------------------------------------------------------------------------- the file

def save_state(run: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(run) / STATE_FILE, buf.getvalue())


def load_state(run: str | Path) -> dict[str, Any]:
    """The saved state of the search in ``run``; one AmcError line when there is none or it is damaged."""
    path = Path(run) / STATE_FILE
    if not path.is_file():
        raise AmcError(f"{run} holds no saved search state ({STATE_FILE}); only a run folder of amc search "
                       "that finished at least its set-up can be resumed (delete it and start again)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise AmcError(f"corrupt search state {path}: {str(e).strip().splitlines()[0] if str(e).strip() else e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise AmcError(f"{path} is not a search state this version of amc can resume")
    return state


class SearchState:
    """Captures the search's state between episodes, keeps the latest in memory, and saves it.

    ``boundary()`` is called between episodes: it captures a deep copy, and writes it when
    ``save_every`` episodes have passed (and at the end). On a stop (Ctrl-C, SIGTERM),
    :meth:`save_latest` writes the latest capture if it is newer than the file, so even
    with ``save_every > 1`` a clean stop loses nothing.

    Args:
        run: the run folder.
        config: the resolved :class:`~agents.search.SearchConfig` as a dict (a resumed search
            checks it against ``config.json``).
        log: the :class:`~agents.callbacks.EpisodeLog`.
        env: the environment.
        agent: the SB3 learner, or None for the random search.
        save_every: episodes between two saves.
        total: the planned episodes (the last one is always saved).
    """

    def __init__(self, run: str | Path, config: dict[str, Any], log: Any, env: Any, agent: Any | None,
                 save_every: int = 1, total: int = 0) -> None:
        self.run, self.config, self.log, self.env, self.agent = Path(run), config, log, env, agent
        self.save_every, self.total = max(1, int(save_every)), total
        self.latest: dict[str, Any] | None = None
        self.saved_episodes: int | None = None
        self.capture_seconds: list[float] = []  # what keeping a search resumable costs (amc bench search)
        self.write_seconds: list[float] = []

    def capture(self) -> dict[str, Any]:
        return {"format": FORMAT, "config": self.config, "log": self.log.state_dict(),
                "agent": agent_state(self.agent) if self.agent is not None else None,
                "rng": rng_state(self.env, self.agent)}

    def boundary(self) -> None:
        t0 = time.perf_counter()
        self.latest = self.capture()
        self.capture_seconds.append(time.perf_counter() - t0)
        n = self.latest["log"]["episodes"]
        if n % self.save_every == 0 or n >= self.total:
            self.save_latest()

    def save_latest(self) -> int | None:
        """Write the latest capture unless the file has it already; returns its episode count."""
        if self.latest is None:
            return self.saved_episodes
        n = self.latest["log"]["episodes"]
        if n != self.saved_episodes:
            self.log.flush()  # the episodes a state covers are on disk before the state is
            t0 = time.perf_counter()
            save_state(self.run, self.latest)
            self.write_seconds.append(time.perf_counter() - t0)
            self.saved_episodes = n
        return n

    def cost(self) -> dict[str, Any]:
        """What saving cost this search: the median milliseconds to capture the state (a deep
        copy, every episode) and to write it (``torch.save`` and an atomic write), the number
        of writes, and the file's size in MiB."""
        path = self.run / STATE_FILE
        med = lambda xs: round(1000 * statistics.median(xs), 2) if xs else None  # noqa: E731
        return {"captures": len(self.capture_seconds), "capture_ms_median": med(self.capture_seconds),
                "writes": len(self.write_seconds), "write_ms_median": med(self.write_seconds),
                "state_mib": round(path.stat().st_size / 2**20, 2) if path.is_file() else None}

    def restore(self, state: dict[str, Any]) -> None:
        """Put a loaded state back into the agent, the noise, the buffer and every generator."""
        try:
            if self.agent is not None:
                if state["agent"] is None:
                    raise ValueError("the state holds no agent")
                load_agent_state(self.agent, state["agent"])
            restore_rng_state(state["rng"], self.env, self.agent)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise AmcError(f"the search state in {self.run} does not fit this search: {e}") from e
        self.latest, self.saved_episodes = state, state["log"]["episodes"]
