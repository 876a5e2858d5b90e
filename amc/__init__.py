"""amc: AMC (AutoML for Model Compression, He et al., ECCV 2018), reimplemented.

The engine is every module of this package except :mod:`amc.cli`: models, data, the layer
graph, the embedding, FLOPs, pruning, reconstruction, training, export, and the spec and
API the commands share (:mod:`amc.spec`, :mod:`amc.api`). The engine never imports
gymnasium, stable-baselines3, ``envs`` or ``agents`` (a test checks it in a fresh
interpreter). :mod:`amc.cli`, the command line, sits on top of everything: it is the one
part of this package that imports ``agents``, whose search builds on ``envs``.
"""
from __future__ import annotations

__version__ = "0.1.0"


def load_pruned(path):  # noqa: ANN001, ANN201 - lazy, so ``import amc`` stays light
    """Rebuild a slim model from a checkpoint folder, without unpickling anything."""
    from amc.pruned import load_pruned as _load

    return _load(path)


__all__ = ["load_pruned", "__version__"]
