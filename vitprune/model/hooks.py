"""Scoped hooks on the MLP hidden units (the input of each block's MLP output projection) and on any pruning site's unit vector.

Every context manager registers hooks on stock timm modules (found through the adapter) and
removes them on exit, also when the body raises. Nothing else about the model is touched.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from .adapter import FamilyAdapter, adapter_for

HiddenFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@contextmanager
def ffn_hooks(adapter: FamilyAdapter, fn: HiddenFn, blocks: Iterable[int] | None = None) -> Iterator[None]:
    """Call ``fn(b, hidden)`` on the (B, N, H) hidden vector of each chosen block; a returned tensor replaces it."""
    handles = []
    try:
        for b in range(adapter.depth) if blocks is None else blocks:
            def pre_hook(_module, args, _b=b):
                out = fn(_b, args[0])
                return None if out is None else (out, *args[1:])

            handles.append(adapter.unit_input(b).register_forward_pre_hook(pre_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def site_input_hooks(sites, fn: HiddenFn) -> Iterator[None]:
    """Call ``fn(i, x)`` on the input of ``sites[i].out_proj`` (its unit vector: MLP hidden units, or the heads'
    concatenated outputs); a returned tensor replaces it."""
    handles = []
    try:
        for i, site in enumerate(sites):
            def pre_hook(_module, args, _i=i):
                out = fn(_i, args[0])
                return None if out is None else (out, *args[1:])

            handles.append(site.out_proj.register_forward_pre_hook(pre_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """No parameter of ``model`` needs a gradient inside (backward passes reach only the tapped activations); each
    parameter's flag is restored on exit."""
    requires = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)


class _Stop(Exception):
    """Raised by ``block_input``'s hook to end a forward once the wanted tensor is in hand."""


@torch.no_grad()
def block_input(adapter: FamilyAdapter, images: torch.Tensor, block: int = 0) -> torch.Tensor:
    """The residual stream entering ``blocks[block]`` (B, N, D); the rest of the forward is skipped."""
    store: list[torch.Tensor] = []

    def pre_hook(_module, args):
        store.append(args[0].detach())
        raise _Stop

    handle = adapter.blocks[block].register_forward_pre_hook(pre_hook)
    try:
        adapter.model(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    return store[0]


@contextmanager
def capture_block_input(adapter: FamilyAdapter, block: int) -> Iterator[list[torch.Tensor]]:
    """Keep the residual stream entering ``blocks[block]`` (as computed, graph and all) in the yielded list."""
    store: list[torch.Tensor] = []
    handle = adapter.blocks[block].register_forward_pre_hook(lambda _module, args: store.append(args[0]))
    try:
        yield store
    finally:
        handle.remove()


@contextmanager
def head_tokens_only(adapter: FamilyAdapter) -> Iterator[None]:
    """Run the last block's MLP on the tokens the head reads only (CLS, and DIST if distilled).

    The other tokens' MLP output at the last block reaches nothing the head reads, so it is
    skipped: the MLP gets the head tokens, its output is zero-padded back to every token (a single
    CLS row is left to broadcast in the block's residual sum, which adds it to every token). Exact
    for the head's logits; the last block's output at the other tokens is then not the model's."""
    tokens = adapter.head_tokens
    if tokens is None:
        raise ValueError("head_tokens_only needs a model whose head reads tokens (global_pool='token')")
    mlp = adapter.mlp(adapter.depth - 1)
    sizes: list[int] = []

    def pre_hook(_module, args):
        sizes.append(args[0].shape[1])
        return (args[0][:, tokens], *args[1:])

    def hook(_module, _args, out):
        if out.shape[1] == 1:  # broadcasts over the tokens in the block's residual sum: no padded copy
            return out
        return torch.nn.functional.pad(out, (0, 0, 0, sizes.pop() - out.shape[1]))

    handles = [mlp.register_forward_pre_hook(pre_hook), mlp.register_forward_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def replace_tokens(hidden: torch.Tensor, tokens: slice, value: torch.Tensor) -> torch.Tensor:
    """``hidden`` with ``hidden[:, tokens]`` replaced by ``value``; gradients flow to ``value`` only there.

    When ``tokens`` covers every position the result is ``value`` itself: nothing of ``hidden``
    survives, so a backward pass need not run through the layers that made it."""
    if tokens == slice(None) and value.shape == hidden.shape:
        return value
    out = hidden.clone()
    out[:, tokens] = value
    return out


@contextmanager
def override_ffn(adapter: FamilyAdapter, values: Mapping[int, torch.Tensor], tokens: slice) -> Iterator[None]:
    """Clamp the hidden rows at ``tokens`` of each block in ``values`` to the given (B, T, H) tensors.

    A clamp of every token is fc2's input itself. A clamp of some tokens replaces those rows of
    fc2's output by fc2(clamp): the same function, but the copy and its backward are D-wide instead
    of H-wide, and where nothing upstream needs a gradient, fc2's input gradient is not computed.
    """
    handles = []
    try:
        for b, value in values.items():
            fc2 = adapter.unit_input(b)
            if tokens == slice(None):
                def pre_hook(_module, args, _value=value):
                    return (replace_tokens(args[0], tokens, _value.to(args[0].dtype)), *args[1:])

                handles.append(fc2.register_forward_pre_hook(pre_hook))
            else:
                def hook(module, args, out, _value=value):
                    clamped = out.clone()
                    clamped[:, tokens] = module.forward(_value.to(args[0].dtype))  # forward(): no hooks again
                    return clamped

                handles.append(fc2.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def edit_ffn(adapter: FamilyAdapter, edits: Mapping[int, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Apply ``edits[b](hidden)`` to the whole (B, N, H) hidden vector of block b (e.g. zero a set of units)."""
    with ffn_hooks(adapter, lambda b, hidden: edits[b](hidden), edits.keys()):
        yield

