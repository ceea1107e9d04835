"""Neuron-path attribution: JAS (reference semantics), top-K, influence-pattern baseline."""
from .jas import METHODS, DiscoveryConfig, PassStats, PathFinder, find_paths

__all__ = ["METHODS", "DiscoveryConfig", "PassStats", "PathFinder", "find_paths"]
