"""Process layout for multi-process runs (``accelerate launch`` / ``torchrun``), via accelerate.

Work is split in whole batches, batch k going to rank k % world, so every batch has the same
composition as in a single-process run and the merged records are identical, record for record.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device
    _state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a one-element list when alone)."""
        if self._state is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def mine(self, n_batches: int) -> list[int]:
        return list(range(self.rank, n_batches, self.world))


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a missing GPU is a user error."""
    from .errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for but no CUDA GPU is visible; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown --device '{name}'; use auto, cpu or cuda[:N]") from exc


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def get_dist(device: str = "auto") -> Dist:
    """Single process unless launched by torchrun/accelerate with WORLD_SIZE > 1.

    On a machine without CUDA a bare ``PartialState()`` leaves each process thinking it is
    alone (duplicated work), so the CPU case passes ``cpu=True`` (gloo backend).
    """
    if launched_world_size() <= 1:
        return Dist(0, 1, resolve_device(device))
    from accelerate import PartialState

    use_cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)
    if use_cpu:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    return Dist(state.process_index, state.num_processes, state.device, state)
