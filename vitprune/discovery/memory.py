"""How many scaled rows one forward/backward may take, from measured bytes per row and free memory.

A pass over R rows holds the autograd graph (activations saved for backward), the clamped leaves
and their gradients, all linear in R, plus a part that does not grow with R (weight copies under
autocast, workspaces). Two probe passes at different R give both terms (``PassMemory``); the chunk
size is then the largest that keeps a pass within a fraction of the memory that was free.

Measuring: on CUDA the caching allocator's peak over forward + backward. On other devices there
is no allocator peak to read, so the bytes are counted: every storage autograd saves for backward
(parameters excluded), plus the leaves and their gradients. That count is within a few percent of
the live-tensor peak, but glibc's heap keeps freed activation buffers resident (its mmap threshold
grows with the sizes freed), so the resident peak is about 1.5x the live peak;
``HEAP_OVERHEAD`` scales the count by that. ``eval/bench_memory.py`` measures both ratios.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

DEFAULT_FRACTION = 0.8
HEAP_OVERHEAD = 1.5  # resident / live bytes of a pass on a glibc heap, eval/results/memory_benchmark.md


@dataclass(frozen=True)
class PassMemory:
    """Bytes of one pass as ``fixed + per_row * rows``, and the budget they must fit in."""

    fixed: int
    per_row: int
    budget: int  # bytes a pass may use: a fraction of what was free when measured

    def rows(self, total: int) -> int:
        """Rows per pass for ``total`` rows: all of them if they fit, else the fewest equal chunks that do.

        Equal chunks (not "as many as fit, then the rest") keep the split a function of the
        number of chunks only, so small changes in free memory rarely change any result bit.
        """
        fit = max(1, (self.budget - self.fixed) // max(1, self.per_row))
        if fit >= total:
            return total
        return math.ceil(total / math.ceil(total / fit))

    def describe(self, total: int) -> str:
        return (f"{self.rows(total)} of {total} rows per pass ({self.per_row / 2**20:.1f} MiB/row, "
                f"budget {self.budget / 2**30:.1f} GiB)")


def free_bytes(device: torch.device) -> int:
    """Memory a pass may still take on ``device``: free CUDA memory, else the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class PassMeter:
    """Measures the bytes one pass holds at its peak: ``with meter.measure(leaves): <pass>``, then ``meter.bytes``."""

    def __init__(self, device: torch.device, exclude: Iterable[torch.Tensor]) -> None:
        self.device = device
        self.exclude = {_storage_key(t) for t in exclude}
        self.bytes = 0  # budgeted bytes of the last measured pass

    @contextmanager
    def measure(self, leaves: Iterable[torch.Tensor]) -> Iterator[None]:
        leaves = list(leaves)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device) - sum(_nbytes(t) for t in leaves)
            yield
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - base
            return
        storages: dict[tuple[int, int], int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = _storage_key(t)
            if key not in self.exclude:
                storages[key] = _nbytes(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        for t in leaves:
            storages[_storage_key(t)] = _nbytes(t)
        live = sum(storages.values()) + sum(_nbytes(t) for t in leaves)  # + one gradient per leaf
        self.bytes = math.ceil(HEAP_OVERHEAD * live)


def fit_linear(rows: tuple[int, int], measured: tuple[int, int], budget: int) -> PassMemory:
    """``PassMemory`` through two (rows, bytes) measurements."""
    per_row = max(1, math.ceil((measured[1] - measured[0]) / (rows[1] - rows[0])))
    return PassMemory(fixed=max(0, measured[0] - per_row * rows[0]), per_row=per_row, budget=budget)


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()
