"""What a discovery run computes: every setting that changes a record, checked in one place."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import UserError
from ..options import LABEL_SOURCES, OBJECTIVES, PRECISIONS, TOKEN_SCOPES, check_choice

MAX_STEPS = 1000  # interpolation steps; far beyond any use (the reference: 20), far below a hang


@dataclass(frozen=True)
class DiscoverySettings:
    """The settings of path discovery (the reference's: method jas, CLS scope, m = 20, prob of the true label)."""

    method: str = "jas"
    topk: int = 1
    steps: int = 20
    token_scope: str = "auto"
    label: str = "truth"
    objective: str = "prob"  # F: target probability (reference), its log, or kl (minus the divergence from the clean output)
    precision: str = "fp32"  # model forwards in fp32, TF32 matmuls, or bf16/fp16 autocast; sums stay fp64
    max_rows: int | None = None  # rows (scaled copies) per forward/backward; None = as many as fit in memory

    def check(self) -> "DiscoverySettings":
        """One-line UserErrors for values no model accepts (the model-dependent limits are the finder's)."""
        from . import DISCOVERY_METHODS

        DISCOVERY_METHODS.check(self.method)
        check_choice("--label", self.label, LABEL_SOURCES)
        check_choice("--token-scope", self.token_scope, TOKEN_SCOPES)
        check_choice("--objective", self.objective, OBJECTIVES)
        check_choice("--precision", self.precision, PRECISIONS)
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise UserError(f"--topk must be a whole number >= 1 (got {self.topk})")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise UserError(f"--steps must be between 1 and {MAX_STEPS} (got {self.steps}; the reference uses 20)")
        if self.max_rows is not None and (isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 1):
            raise UserError(f"--max-rows must be >= 1 (got {self.max_rows})")
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "DiscoverySettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})


__all__ = ["DiscoverySettings", "MAX_STEPS"]
