"""The engine's imports point one way: no engine module imports the MDP, the agents or their libraries."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import amc

FORBIDDEN = ("gymnasium", "stable_baselines3", "envs", "agents")


def engine_modules() -> list[str]:
    """Every module of the amc package except the command line (and `python -m amc`), which sit on top."""
    names = ["amc"]
    for info in pkgutil.walk_packages(amc.__path__, "amc."):
        if info.name in ("amc.cli", "amc.__main__") or info.name.startswith("amc.cli."):
            continue
        names.append(info.name)
    return sorted(names)


def test_engine_modules_never_import_envs_agents_gymnasium_or_sb3():
    modules = engine_modules()
    assert {"amc.spec", "amc.api", "amc.pruner", "amc.train", "amc.problem"} <= set(modules)
    code = (f"import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(amc.__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_check_would_catch_a_lazy_import(tmp_path):
    """The same check, on a module that imports the agents inside a function it calls at import."""
    (tmp_path / "sneaky.py").write_text("def f():\n    import agents.search\nf()\n")
    code = ("import sys; sys.path.insert(0, %r); import sneaky; "
            "print(any(m.split('.')[0] == 'agents' for m in sys.modules))" % str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(amc.__file__).parent.parent)
    assert out.stdout.strip() == "True", out.stderr
