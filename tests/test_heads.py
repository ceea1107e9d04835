"""Attention heads as a pruning site: sliced == masked, checkpoints and ONNX, least squares of proj, one MAC budget over
MLP units and heads, the head integrated gradients, and the one-line refusals."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.utils.data import TensorDataset

import vitprune
from vitprune.criteria.heads import PathClamp, PathCondition, collect_head_stats, head_integrated_gradients
from vitprune.errors import UserError
from vitprune.model.adapter import adapter_for
from vitprune.model.hooks import ffn_hooks, override_ffn, site_input_hooks
from vitprune.prune.lsq import heldout_positions, reconstruct
from vitprune.prune.macs import count_macs_params, head_unit_macs, mlp_unit_macs
from vitprune.prune.masks import Mask, NeuronMask
from vitprune.prune.slicing import masked_sites, slice_sites

from .helpers import tiny_images, tiny_vit, joint_from_macs

VARIANTS = {
    "plain": {},
    "qk_norm": {"qk_norm": True},
    "registers_no_cls_avg": {"reg_tokens": 2, "class_token": False, "global_pool": "avg"},
    "scale_norm": {"scale_attn_norm": True},
}


def _mask(model, heads_kept, mlp_keep=None) -> NeuronMask:
    adapter = adapter_for(model)
    widths = adapter.hidden_widths
    kept = mlp_keep or [tuple(range(0, w, 2)) for w in widths]
    return NeuronMask(tuple(widths), tuple(tuple(k) for k in kept),
                      heads=NeuronMask(tuple(adapter.head_counts), tuple(tuple(k) for k in heads_kept)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sliced_heads_equal_masked_heads(variant):
    model = tiny_vit(embed_dim=48, num_heads=4, **VARIANTS[variant])
    mask = _mask(model, [(0, 2), (1,), (0, 1, 3)])
    pruned = slice_sites(model, mask)
    assert adapter_for(pruned).head_counts == [2, 1, 3]
    x = tiny_images(4)
    with torch.no_grad():
        dense = model(x)
        hooks = masked_sites(model, mask.heads, "heads")
        from vitprune.model.hooks import edit_ffn
        from vitprune.prune.slicing import masked_edits
        try:
            with edit_ffn(adapter_for(model), masked_edits(mask)):
                masked = model(x)
        finally:
            for h in hooks:
                h.remove()
        sliced = pruned(x)
    assert torch.allclose(sliced, masked, atol=1e-5)
    assert not torch.allclose(sliced, dense, atol=1e-3)  # something was removed


def test_unit_costs_add_up_to_the_counted_macs():
    model = tiny_vit(embed_dim=48, num_heads=4)
    mlp_cost, total = mlp_unit_macs(model)
    head_cost = head_unit_macs(model)
    mask = _mask(model, [(0,), (1, 2), (0, 1, 3)])
    predicted = total - sum(c * (w - k) for c, w, k in zip(mlp_cost, mask.widths, mask.kept_counts)) \
        - sum(c * (n - k) for c, n, k in zip(head_cost, mask.heads.widths, mask.heads.kept_counts))
    assert count_macs_params(slice_sites(model, mask))[0] == predicted


@pytest.mark.parametrize("scope", ["per-block", "global", "global-raw"])
def test_one_mac_budget_over_units_and_heads_lands_within_one_unit(scope):
    model = tiny_vit(embed_dim=48, num_heads=4)
    adapter = adapter_for(model)
    mlp_cost, total = mlp_unit_macs(model)
    head_cost = head_unit_macs(model)
    gen = torch.Generator().manual_seed(0)
    mlp_scores = [torch.rand(w, generator=gen, dtype=torch.float64) for w in adapter.hidden_widths]
    head_scores = [torch.rand(n, generator=gen, dtype=torch.float64) * 100 for n in adapter.head_counts]
    prunable = sum(c * w for c, w in zip(mlp_cost, adapter.hidden_widths)) + sum(c * n for c, n in zip(head_cost, adapter.head_counts))
    for target in (0.6, 0.45, 0.35):
        mask = joint_from_macs(mlp_scores, mlp_cost, head_scores, head_cost, prunable - (1 - target) * total, scope=scope)
        got = count_macs_params(slice_sites(model, mask))[0]
        slack = max(head_cost) if scope == "per-block" else max(mlp_cost)  # rounding: one head per block, else one unit
        assert abs(got - target * total) <= len(mlp_cost) * slack + 1
        assert all(k >= 1 for k in mask.heads.kept_counts)
        if scope != "per-block":
            assert got <= target * total + 1e-6


def test_global_scope_keeps_the_best_heads_of_a_block():
    model = tiny_vit(embed_dim=48, num_heads=4)
    adapter = adapter_for(model)
    mlp_cost, total = mlp_unit_macs(model)
    head_cost = head_unit_macs(model)
    mlp_scores = [torch.ones(w, dtype=torch.float64) for w in adapter.hidden_widths]
    head_scores = [torch.tensor([1.0, 4.0, 2.0, 3.0], dtype=torch.float64) for _ in adapter.head_counts]
    prunable = sum(c * w for c, w in zip(mlp_cost, adapter.hidden_widths)) + sum(c * n for c, n in zip(head_cost, adapter.head_counts))
    mask = joint_from_macs(mlp_scores, mlp_cost, head_scores, head_cost, prunable - 0.5 * total, scope="global")
    for kept in mask.heads.kept:
        assert set(kept) == set(sorted(range(4), key=lambda h: -head_scores[0][h])[: len(kept)])


def test_head_integrated_gradients_add_up_to_the_change_of_the_target_probability():
    model = tiny_vit(embed_dim=48, num_heads=4)
    sites = adapter_for(model).sites("heads")
    images, labels = tiny_images(3), torch.tensor([0, 1, 2])
    clean: dict[int, torch.Tensor] = {}
    with torch.no_grad(), site_input_hooks(sites, lambda b, x: clean.__setitem__(b, x.clone())):
        p1 = model(images).softmax(-1).gather(1, labels[:, None]).squeeze(1)
    with torch.no_grad(), site_input_hooks(sites, lambda b, x: torch.zeros_like(x)):
        p0 = model(images).softmax(-1).gather(1, labels[:, None]).squeeze(1)
    ig = head_integrated_gradients(model, sites, images, labels, [clean[b] for b in range(len(sites))], steps=200)
    assert ig.path is None
    total = sum(t.sum(1) for t in ig.heads)
    assert torch.allclose(total.float(), (p1 - p0).double().float(), atol=2e-3 * float((p1 - p0).abs().max()) + 1e-5)


@pytest.mark.parametrize("tokens", [slice(None), slice(0, 1)])
def test_path_conditioned_head_and_path_terms_add_up_to_the_change_with_the_rest_held_clean(tokens):
    """Completeness of the conditioned passes: heads and path units go from 0 to clean together, every other MLP unit
    at ``tokens`` stays clean, so sum_h IG_h + IG_path = F(clean) - F(no heads, no path units)."""
    model = tiny_vit(embed_dim=48, num_heads=4)
    adapter = adapter_for(model)
    sites = adapter.sites("heads")
    images, labels = tiny_images(3), torch.tensor([0, 1, 2])
    clean: dict[int, torch.Tensor] = {}
    hidden: dict[int, torch.Tensor] = {}
    with torch.no_grad(), site_input_hooks(sites, lambda b, x: clean.__setitem__(b, x.clone())), \
            ffn_hooks(adapter, lambda b, h: hidden.__setitem__(b, h[:, tokens].clone())):
        p1 = model(images).softmax(-1).gather(1, labels[:, None]).squeeze(1)
    units = [torch.tensor([[b, 5 + i] for i in range(3)]) for b in range(len(sites))]  # K = 2 per block, per image
    held = PathClamp([hidden[b] for b in range(len(sites))], units, tokens)
    zeroed = {b: v.detach() for b, v in held.at(0.0).items()}
    with torch.no_grad(), site_input_hooks(sites, lambda b, x: torch.zeros_like(x)), override_ffn(adapter, zeroed, tokens):
        p0 = model(images).softmax(-1).gather(1, labels[:, None]).squeeze(1)
    ig = head_integrated_gradients(model, sites, images, labels, [clean[b] for b in range(len(sites))], steps=200, held=held)
    total = sum(t.sum(1) for t in ig.heads) + ig.path
    assert torch.allclose(total.float(), (p1 - p0).float(), atol=2e-3 * float((p1 - p0).abs().max()) + 1e-5)
    plain = head_integrated_gradients(model, sites, images, labels, [clean[b] for b in range(len(sites))], steps=8)
    conditioned = head_integrated_gradients(model, sites, images, labels, [clean[b] for b in range(len(sites))], steps=8, held=held)
    assert not torch.allclose(torch.stack(plain.heads), torch.stack(conditioned.heads))  # the condition changes the terms


def test_head_statistics_are_per_head_and_finite():
    model = tiny_vit(embed_dim=48, num_heads=4)
    ids = [f"{i}" for i in range(4)]
    batches = [(ids, tiny_images(4), torch.tensor([0, 1, 2, 3]))]
    condition = PathCondition({i: [[0], [1], [2]] for i in ids}, {i: int(i) for i in ids}, slice(0, 1))
    stats = collect_head_stats(model, batches, ig=True, condition=condition, steps=4, quiet=True)
    assert stats.images == 4
    for kind in (stats.magnitude, stats.taylor, stats.ig, stats.path_ig):
        assert [len(t) for t in kind] == [4, 4, 4] and all(torch.isfinite(t).all() and (t >= 0).all() for t in kind)
    assert collect_head_stats(model, batches, steps=4, quiet=True).ig is None  # the m passes only when asked


def test_least_squares_refits_proj_of_pruned_heads():
    model = tiny_vit(embed_dim=48, num_heads=4)
    mask = _mask(model, [(0, 2), (1, 3), (0, 1, 3)], mlp_keep=[tuple(range(w)) for w in adapter_for(model).hidden_widths])
    images = tiny_images(20, seed=4)
    refit, recon = reconstruct(model, mask, images, heldout_positions(len(images)))
    assert [f.site for f in recon.blocks] == ["heads", "mlp"] * 3
    assert [f.kept for f in recon.blocks if f.site == "heads"] == [24, 24, 36]  # head_dim 12 per kept head
    plain = slice_sites(model, mask)
    x = tiny_images(20, seed=4)
    with torch.no_grad():
        dense = model(x)
        assert (refit(x) - dense).pow(2).mean() < (plain(x) - dense).pow(2).mean()


def _data(n_cal=24, n_eval=12):
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(n_cal + n_eval, 3, 32, 32, generator=gen)
    labels = torch.arange(n_cal + n_eval) % 4
    return TensorDataset(images[:n_cal], labels[:n_cal]), TensorDataset(images[n_cal:], labels[n_cal:])


@pytest.mark.slow
def test_compress_with_heads_saves_loads_and_exports(tmp_path):
    model = tiny_vit(embed_dim=48, num_heads=4, num_classes=4)
    del model.vitprune_source
    result = vitprune.compress(model, _data(), target_macs=0.5, prune=("mlp", "heads"), criterion="magnitude",
                               head_criterion="taylor", compensate="lsq", scope="global", per_class=6, quiet=True)
    heads = result.mask.heads
    assert heads is not None and adapter_for(result.model).head_counts == heads.kept_counts
    assert result.report.mask.kept_heads == heads.kept_counts and result.report.mask.head_criterion == "taylor"
    assert result.report.macs.ratio <= 0.5 + 1e-9
    folder = result.save(tmp_path / "ckpt")
    assert json.loads((folder / "vitprune.json").read_text())["attn_heads"] == heads.kept_counts
    assert Mask.from_json(json.loads((folder / "mask.json").read_text())) == result.mask
    loaded = vitprune.load_model(str(folder))
    x = tiny_images(3)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    info = result.export_onnx(tmp_path / "m.onnx", quantize="int8", max_int8_drop=100.0, keep_slower_int8=True)
    assert info["onnx"]["parity_max_abs"] <= 1e-4 and info["int8"]["written"]


def test_the_path_head_criterion_discovers_paths_even_for_an_mlp_criterion_that_does_not():
    model = tiny_vit(embed_dim=48, num_heads=4, num_classes=4)
    del model.vitprune_source
    result = vitprune.compress(model, _data(), target_macs=0.5, prune=("mlp", "heads"), criterion="magnitude",
                               head_criterion="path", compensate="none", scope="global", per_class=4, steps=2, quiet=True)
    report = result.report
    assert report.mask.head_criterion == "path" and report.discovery is not None and report.discovery["steps"] == 2
    assert report.timings["discovery_s"] > 0 and report.timings["head_statistics_s"] > 0
    assert report.macs.ratio <= 0.5 + 1e-9


def test_heads_need_a_budget_and_the_mlps(fashion_dir):
    with pytest.raises(UserError, match="per-class path units"):
        vitprune.compress("demo", "demo", keep_topk=5, prune=("mlp", "heads"), quiet=True)
    with pytest.raises(UserError, match="mlp or mlp,heads"):
        vitprune.compress("demo", "demo", sparsity=0.5, prune=("heads",), quiet=True)
    with pytest.raises(UserError, match="unknown site kind"):
        vitprune.compress("demo", "demo", sparsity=0.5, prune=("mlp", "tokens"), quiet=True)


def test_attention_it_cannot_slice_by_head_is_refused_in_one_line():
    model = tiny_vit(embed_dim=48, num_heads=4)
    broken = copy.deepcopy(model)
    broken.blocks[1].attn = torch.nn.Identity()
    with pytest.raises(UserError, match="block 1: --prune heads cannot remove heads here: it uses Identity attention"):
        adapter_for(broken).sites("heads")
    assert len(adapter_for(broken).sites("mlp")) == 3  # pruning MLPs alone still works


def test_mlp_only_masks_keep_their_json_and_no_heads():
    model = tiny_vit()
    adapter = adapter_for(model)
    mask = NeuronMask(tuple(adapter.hidden_widths), tuple(tuple(range(w // 2)) for w in adapter.hidden_widths))
    assert "heads" not in mask.to_json() and Mask.from_json(mask.to_json()) == mask


def test_a_head_criterion_registered_from_outside_ranks_the_heads():
    from vitprune.criteria import HEAD_CRITERIA

    @vitprune.register_head_criterion("last-head-first")
    def last_head_first(stats, sites, seed):
        return [torch.arange(site.width, dtype=torch.float64) for site in sites]

    try:
        model = tiny_vit(embed_dim=48, num_heads=4, num_classes=4)
        del model.vitprune_source
        result = vitprune.compress(model, _data(), sparsity=0.5, prune=("mlp", "heads"), criterion="magnitude",
                                   head_criterion="last-head-first", compensate="none", per_class=6, quiet=True)
        assert result.mask.heads.kept == ((2, 3),) * 3 and result.report.mask.head_criterion == "last-head-first"
    finally:
        HEAD_CRITERIA.remove("last-head-first")


def test_evaluate_runs_every_budget_point_once_per_head_criterion():
    from vitprune.options import EvaluateOptions
    from vitprune.reports import KEY_FIELDS

    opts = EvaluateOptions(criterion=("magnitude", "jas-freq"), compensate=("lsq",), sparsity=(0.5,), target_macs=(0.4,),
                           keep_topk=(5,), prune="mlp,heads", head_criterion=("ig", "taylor")).resolve().validate()
    points = opts.points()[1:]
    budgets = [p for p in points if p.budget.keep_topk is None]
    assert len(budgets) == 2 * 2 * 2 and {p.head_criterion for p in budgets} == {"ig", "taylor"}
    assert all(p.prune == ("mlp", "heads") for p in budgets)
    assert [p.head_criterion for p in points if p.budget.keep_topk] == [None]  # keep-topk points prune MLPs only
    assert "head_criterion" in KEY_FIELDS  # resuming tells the head criteria apart
    with pytest.raises(UserError, match="head-criterion must be one of"):
        EvaluateOptions(prune="mlp,heads", head_criterion=("nope",)).resolve().validate()


def test_pruning_heads_without_a_scope_takes_the_heads_study_allocation():
    from vitprune.defaults import HEAD_DEFAULT
    from vitprune.options import CompressOptions, EvaluateOptions

    assert CompressOptions(sparsity=0.5).resolve().scope == "per-block"
    assert CompressOptions(target_macs=0.4, prune="mlp,heads").resolve().scope == HEAD_DEFAULT["scope"]
    assert CompressOptions(target_macs=0.4, prune="mlp,heads", scope="per-block").resolve().scope == "per-block"
    assert EvaluateOptions(prune=("mlp", "heads")).resolve().scope == HEAD_DEFAULT["scope"]


def test_a_head_criterion_without_heads_is_refused_not_ignored():
    from vitprune.options import CompressOptions, EvaluateOptions

    with pytest.raises(UserError, match="--prune mlp,heads"):
        CompressOptions(sparsity=0.5, head_criterion="taylor").resolve().validate()
    with pytest.raises(UserError, match="--prune mlp,heads"):
        EvaluateOptions(head_criterion=("taylor",)).resolve().validate()
