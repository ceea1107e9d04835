"""vitprune: influential-neuron-path discovery and structured pruning for timm Vision Transformers.

The public API (imported on first use, so that the command line answers ``--help`` without torch)::

    vitprune.compress(model, data, keep_topk=K | sparsity=S | target_macs=R, **options) -> CompressResult
    vitprune.evaluate(model, data, **options) -> EvaluateResult      # accuracy vs budget, many criteria
    vitprune.discover(model, data, **options) -> PathRun             # per-image top-K JAS paths
    vitprune.load_model(spec) / vitprune.load_data(spec) / vitprune.find_paths(model, images, labels)
    vitprune.register_criterion / register_head_criterion / register_compensation / register_discovery_method /
    register_mlp_layout / register_head_layout / register_family; vitprune.adapter_for(model) (a model family's adapter)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "compress": "vitprune.api", "evaluate": "vitprune.api", "discover": "vitprune.api",
    "CompressResult": "vitprune.api", "EvaluateResult": "vitprune.api",
    "load_model": "vitprune.model.load", "load_data": "vitprune.data",
    "find_paths": "vitprune.discovery.finder", "PathFinder": "vitprune.discovery.finder",
    "PathRecord": "vitprune.discovery.records", "PathRun": "vitprune.discovery.records", "load_run": "vitprune.discovery.records",
    "DiscoverySettings": "vitprune.discovery.settings",
    "Mask": "vitprune.prune.masks", "SiteMask": "vitprune.prune.masks", "NeuronMask": "vitprune.prune.masks",
    "CompressReport": "vitprune.reports", "SweepPoint": "vitprune.reports",
    "CriterionInputs": "vitprune.criteria.base", "Criterion": "vitprune.criteria.base",
    "CompensationInputs": "vitprune.prune.compensate", "Pruned": "vitprune.prune.compensate",
    "register_criterion": "vitprune.criteria", "register_head_criterion": "vitprune.criteria",
    "register_compensation": "vitprune.prune",
    "register_discovery_method": "vitprune.discovery", "register_mlp_layout": "vitprune.model",
    "register_family": "vitprune.model", "register_head_layout": "vitprune.model", "adapter_for": "vitprune.model.adapter",
    "UserError": "vitprune.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vitprune' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
