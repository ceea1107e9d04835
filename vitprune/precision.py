"""``--precision``: one context every stage runs its model forwards in (discovery, statistics, least squares, evaluation).

fp32 is plain fp32; tf32 allows TF32 matmuls on CUDA (a CUDA mode: on the CPU it runs as fp32);
bf16 / fp16 run the forwards under autocast. Sums and fits stay in fp64 wherever they are made.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Allow TF32 matmuls (Ampere+ GPUs) inside the block; restores the previous setting."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def precision_context(precision: str, device: torch.device | str) -> Iterator[None]:
    """Model forwards inside run at ``precision`` on ``device``."""
    dtype = AUTOCAST.get(precision)
    device_type = torch.device(device).type
    with ExitStack() as stack:
        stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=dtype is not None))
        stack.enter_context(tf32(precision == "tf32"))
        yield


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax and sums in fp32 for half-precision tensors; fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


__all__ = ["precision_context", "tf32", "at_least_fp32", "AUTOCAST"]
