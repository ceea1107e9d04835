"""The compression defaults, and the evidence they come from.

Every default here is the winner of the zoo evaluation (``eval/zoo.py``, results in
``eval/results/zoo/``): the best mean one-shot top-1 over the zoo models at 75% and 90% FFN
sparsity (per block) for ``compress --sparsity``, and over the zoo's ``--keep-topk`` sets for
``compress --keep-topk``. ``tests/test_defaults.py`` checks that they still equal the winners
recorded in ``eval/results/zoo/summary.json``. The discovery cost of compress / evaluate
(``DISCOVERY_DEFAULT``) is the winner of the cost-quality study (``eval/cost_quality.py``, results
in ``eval/results/cost_quality/``): the cheapest setting whose zoo mean selection top-1 holds
within 0.1 points of the reference setting's (``FAITHFUL_DISCOVERY``, ``compress --faithful-discovery``).
"""
from __future__ import annotations

# discovery settings of the path criteria when compress / evaluate do not name them: one discovery run
# serves jas and jas-freq, so scope and objective are the best path combination's (jas-freq[all,prob] + lsq)
# and the aggregation is jas's best with them
JAS_DEFAULT = {"token_scope": "all", "objective": "prob", "aggregation": "ig"}
# compress --sparsity S
SPARSITY_DEFAULT = {"criterion": "jas-freq", "compensate": "lsq"}
# compress --keep-topk K
KEEP_DEFAULT = {"criterion": "jas-freq", "compensate": "lsq"}
# compress / evaluate --compensate lsq: what the fit reproduces and how tokens weigh
LSQ_DEFAULT = {"target": "output", "weighting": "readout"}
# calibration images per class for compress
PER_CLASS_DEFAULT = 16
# compress / evaluate --prune mlp,heads: the head criterion and the budget allocation when --scope is not given
# (eval/heads.py -> eval/results/heads/summary.json)
HEAD_DEFAULT = {"criterion": "ig", "scope": "global"}
# discovery cost of compress / evaluate: integrated-gradient steps m and calibration images per class
# (eval/results/cost_quality/summary.json "winner"); `vitprune discover` keeps the reference's m = 20
DISCOVERY_DEFAULT = {"steps": 4, "per_class": PER_CLASS_DEFAULT}
# compress --faithful-discovery: the reference's m = 20 (the setting the zoo chose every other default with)
FAITHFUL_DISCOVERY = {"steps": 20, "per_class": PER_CLASS_DEFAULT}
# recovery (--finetune-*): learning rate, block-output distillation weight, held-out images per class that pick the best
# moment (eval/recovery.py -> eval/results/recovery/summary.json "chosen": the best mean selection top-1 over the zoo)
RECOVERY_DEFAULT = {"lr": 3e-3, "features": 1.0, "selection_per_class": 50}
