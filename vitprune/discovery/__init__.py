"""Path discovery: the shared pass engine, its methods (JAS, influence pattern), records, importance and runs.

``DISCOVERY_METHODS`` (torch-free) names the methods ``--method`` offers; each is a
``vitprune.discovery.method.DiscoveryMethod`` running on the shared ``PassEngine``.
"""
from __future__ import annotations

from ..registry import Registry

DISCOVERY_METHODS = Registry("discovery method", "--method")
DISCOVERY_METHODS.add("jas", "vitprune.discovery.jas:JointAttribution",
                      help="greedy top-K joint attribution score paths (the reference), with the dense importance of every unit")
DISCOVERY_METHODS.add("influence-pattern", "vitprune.discovery.influence:InfluencePattern",
                      help="per-layer units of largest mean input-scaled gradient (baseline), scored by JAS")


def register_discovery_method(name: str, *, help: str = "", replace: bool = False):
    """Register a ``DiscoveryMethod`` subclass under ``name`` (``--method NAME``)."""
    return DISCOVERY_METHODS.register(name, help=help, replace=replace)


__all__ = ["DISCOVERY_METHODS", "register_discovery_method"]
