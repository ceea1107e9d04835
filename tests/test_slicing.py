"""Masks and physical slicing: sliced == masked, compensation formula, per-block widths, round trip."""
from __future__ import annotations

import pytest
import torch

from vitprune.criteria import CRITERIA
from vitprune.criteria.base import unit_scores
from vitprune.criteria.stats import collect_stats
from vitprune.discovery.importance import ImportanceSums
from vitprune.discovery.records import PathRecord, PathRun
from vitprune.errors import UserError
from vitprune.model.adapter import adapter_for
from vitprune.model.hooks import edit_ffn
from vitprune.model.load import load_model, save_checkpoint
from vitprune.prune.macs import count_macs_params
from vitprune.prune.masks import Mask, NeuronMask, from_keep_sets
from vitprune.prune.slicing import compensation_shift, masked_edits, slice_sites

from .helpers import tiny_images, tiny_vit, from_scores


def _stats(model, x, y):
    return collect_stats(model, [(["a"], x, y)], quiet=True)


def _masked_logits(model, mask, x):
    with torch.no_grad(), edit_ffn(adapter_for(model), masked_edits(mask)):
        return model(x)


@pytest.mark.parametrize("criterion", CRITERIA.names())
@pytest.mark.parametrize("scope", ["per-block", "global"])
def test_sliced_equals_masked_for_every_criterion(criterion, scope):
    model = tiny_vit()
    x, y = tiny_images(6), torch.tensor([0, 1, 2, 3, 4, 0])
    records = [PathRecord(id="a", label=0, target=0, path=[[1, 2], [3, 4], [5, 6]], score=0.5)]
    importance = ImportanceSums((64, 64, 64))
    scores = [torch.randn(2, 64, generator=torch.Generator().manual_seed(b)) for b in range(3)]
    importance.add([0, 1], scores, scores)
    scores = unit_scores(criterion, model, stats=_stats(model, x, y), paths=PathRun(records, None, importance), seed=3)
    mask = from_scores(scores, 0.6, scope=scope, criterion=criterion)
    pruned = slice_sites(model, mask)
    assert adapter_for(pruned).hidden_widths == mask.kept_counts
    with torch.no_grad():
        got = pruned(x)
    want = _masked_logits(model, mask, x)
    assert (got - want).abs().max() <= 1e-5
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_sliced_equals_masked_at_every_token_with_different_widths():
    model = tiny_vit()
    mask = from_keep_sets([64, 64, 64], [[0], list(range(10, 50)), list(range(64))], "test")
    pruned = slice_sites(model, mask)
    assert adapter_for(pruned).hidden_widths == [1, 40, 64]
    x = tiny_images(3)
    with torch.no_grad():
        tokens_sliced = pruned.forward_features(x)
        with edit_ffn(adapter_for(model), masked_edits(mask)):
            tokens_masked = model.forward_features(x)
    assert (tokens_sliced - tokens_masked).abs().max() <= 1e-5


def test_compensation_changes_only_fc2_bias_by_the_formula():
    model = tiny_vit()
    x, y = tiny_images(4), torch.tensor([0, 1, 2, 3])
    stats = _stats(model, x, y)
    mask = from_scores(unit_scores("variance", model, stats=stats), 0.5)
    plain = slice_sites(model, mask)
    comp = slice_sites(model, mask, bias_shift=compensation_shift(model, mask, stats.mean))
    for (name, a), (_, b) in zip(plain.state_dict().items(), comp.state_dict().items()):
        if name.endswith("mlp.fc2.bias"):
            blk = int(name.split(".")[1])
            removed = mask.removed(blk)
            w2 = model.blocks[blk].mlp.fc2.weight.detach().double()
            want = sum(w2[:, j] * stats.mean[blk][j] for j in removed)
            assert torch.allclose((b - a).double(), want, atol=1e-6)
        else:
            assert torch.equal(a, b), name


def test_budget_rules():
    scores = [torch.arange(10.0), torch.arange(10.0) * 100, torch.zeros(10)]
    m = from_scores(scores, 0.5)
    assert m.kept_counts == [5, 5, 5] and m.kept[0] == (5, 6, 7, 8, 9) and m.kept[2] == (0, 1, 2, 3, 4)
    assert from_scores(scores, 0.5, round_to=4).kept_counts == [4, 4, 4]
    g = from_scores(scores, 0.8, scope="global", min_keep=2)
    assert min(g.kept_counts) >= 2 and sum(g.kept_counts) == 6
    with pytest.raises(UserError, match="--min-keep 2 keeps 6 units"):  # 90% leaves 3 units: min-keep would override it
        from_scores(scores, 0.9, scope="global", min_keep=2)
    with pytest.raises(UserError, match="0.00% sparsity"):
        from_scores(scores, 0.5, min_keep=1000)
    with pytest.raises(UserError, match="--round-to 1000"):
        from_scores(scores, 0.5, round_to=1000)
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        from_scores(scores, 1.0)
    with pytest.raises(UserError, match="--min-keep"):
        from_scores(scores, 0.5, min_keep=0)
    with pytest.raises(UserError, match="block 1 would keep no units"):
        from_keep_sets([10, 10], [[1], []], "test")
    assert Mask.from_json(m.to_json()) == m


def test_pruned_checkpoint_roundtrip(tmp_path):
    model = tiny_vit()
    mask = from_keep_sets([64, 64, 64], [[1, 2, 3], list(range(20)), [7]], "test")
    pruned = slice_sites(model, mask)
    meta = {**model.vitprune_source, "mlp_hidden": mask.kept_counts, "kept": [list(k) for k in mask.kept]}
    save_checkpoint(pruned, tmp_path / "p", meta)
    loaded = load_model(str(tmp_path / "p"))
    x = tiny_images(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_macs_fall_with_the_mlp():
    model = tiny_vit()
    dense, _ = count_macs_params(model)
    half = slice_sites(model, from_scores([torch.arange(64.0)] * 3, 0.5))
    pruned, _ = count_macs_params(half)
    tokens, d = 17, 32
    # per removed unit and block: fc1 row + fc2 column per token, one GELU per token, one fc1 bias (torch-pruning's counting)
    assert dense - pruned == 3 * 32 * (tokens * 2 * d + tokens + 1)
