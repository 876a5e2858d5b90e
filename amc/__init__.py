"""amc: AMC (AutoML for Model Compression, He et al., ECCV 2018), reimplemented.

The core engine: models, data, layer graph, embedding, FLOPs, pruning, reconstruction,
training, export and the CLI. It never imports gymnasium or stable-baselines3.
"""
from __future__ import annotations

__version__ = "0.1.0"


def load_pruned(path):  # noqa: ANN001, ANN201 - lazy, so ``import amc`` stays light
    """Rebuild a slim model from a checkpoint folder, without unpickling anything."""
    from amc.pruned import load_pruned as _load

    return _load(path)


__all__ = ["load_pruned", "__version__"]
