"""Least-squares reconstruction of fc2: exact when nothing is removed, never worse than the plain slice
on its calibration tokens, the same for sliced and masked models, and the plain slice at infinite ridge."""
from __future__ import annotations

import math

import pytest
import torch

from vitprune.model.adapter import adapter_for
from vitprune.model.hooks import edit_ffn
from vitprune.prune.compensate import CompensationInputs, calibration_set, least_squares
from vitprune.prune.lsq import RIDGES, heldout_positions, reconstruct
from vitprune.prune.masks import from_keep_sets
from vitprune.prune.slicing import masked_edits, slice_sites

from .helpers import tiny_images, tiny_vit, from_scores


def _mask(model, sparsity=0.75, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return from_scores([torch.rand(w, generator=gen) for w in adapter_for(model).hidden_widths], sparsity)


def _calib(n=20):
    return tiny_images(n, seed=7), heldout_positions(n)


def test_heldout_positions():
    assert heldout_positions(10).tolist() == [False, False, False, False, True] * 2
    assert heldout_positions(3).tolist() == [False, False, True]  # too few for every 5th: the last one
    with pytest.raises(Exception, match="at least 2 calibration images"):
        heldout_positions(1)


def test_keeping_every_unit_changes_nothing():
    model = tiny_vit()
    x, held = _calib()
    full = from_keep_sets(adapter_for(model).hidden_widths, [list(range(w)) for w in adapter_for(model).hidden_widths], "all")
    refit, info = reconstruct(model, full, x, held)
    for b in range(len(model.blocks)):
        assert (refit.blocks[b].mlp.fc2.weight - model.blocks[b].mlp.fc2.weight).abs().max() <= 1e-6
        assert (refit.blocks[b].mlp.fc2.bias - model.blocks[b].mlp.fc2.bias).abs().max() <= 1e-6
    test = tiny_images(4, seed=9)
    with torch.no_grad():
        assert (refit(test) - model(test)).abs().max() <= 1e-6
    assert all(f.calibration_error["lsq"] <= 1e-9 * max(f.target_energy, 1.0) for f in info.blocks)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("target", ["local", "output"])
@pytest.mark.parametrize("weighting", ["uniform", "readout"])
def test_calibration_error_lsq_le_mean_le_none(sparsity, target, weighting):
    """On the same calibration tokens of every block, against the block's target: least squares <= mean-shift
    <= the plain slice."""
    model = tiny_vit()
    x, held = _calib(30)
    _, info = reconstruct(model, _mask(model, sparsity), x, held, target=target, weighting=weighting)
    for f in info.blocks:
        e = f.calibration_error
        assert e["lsq"] <= e["mean"] * (1 + 1e-9) + 1e-12
        assert e["mean"] <= e["slice"] * (1 + 1e-9) + 1e-12
    assert info.blocks[-1].calibration_error["lsq"] < info.blocks[-1].calibration_error["slice"]


def test_reconstruction_improves_the_output():
    model = tiny_vit()
    x, held = _calib(40)
    mask = _mask(model, 0.75)
    refit, _ = reconstruct(model, mask, x, held)
    plain = slice_sites(model, mask)
    with torch.no_grad():
        dense = model(x)
        assert (refit(x) - dense).pow(2).mean() < (plain(x) - dense).pow(2).mean()


def test_refit_sliced_equals_refit_masked():
    """The refit weights on the kept columns of a full-width fc2, removed units zeroed: the same logits."""
    model = tiny_vit()
    x, held = _calib()
    mask = _mask(model, 0.6, seed=3)
    refit, info = reconstruct(model, mask, x, held)
    masked = tiny_vit()
    with torch.no_grad():
        for b, (w, c) in enumerate(info.weights):
            fc2 = masked.blocks[b].mlp.fc2
            fc2.weight[:, list(mask.kept[b])] = w
            fc2.bias.copy_(c)
        test = tiny_images(5, seed=11)
        with edit_ffn(adapter_for(masked), masked_edits(mask)):
            want = masked(test)
        got = refit(test)
    assert (got - want).abs().max() <= 1e-5
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_infinite_ridge_is_the_plain_slice():
    model = tiny_vit()
    x, held = _calib()
    mask = _mask(model)
    refit, info = reconstruct(model, mask, x, held, ridges=(math.inf,))
    plain = slice_sites(model, mask)
    assert all(f.ridge is None for f in info.blocks)
    for a, b in zip(refit.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
    big, _ = reconstruct(model, mask, x, held, ridges=(1e9,))  # a huge finite ridge tends to the slice
    for b in range(len(model.blocks)):
        assert (big.blocks[b].mlp.fc2.weight - plain.blocks[b].mlp.fc2.weight).abs().max() <= 1e-6


def test_fewer_tokens_than_kept_units_still_solves():
    """2 images x 17 tokens = 34 rows for 64 kept units + bias: underdetermined, solved near the slice."""
    model = tiny_vit()
    x, held = tiny_images(2, seed=5), heldout_positions(2)
    full = from_keep_sets(adapter_for(model).hidden_widths, [list(range(64))] * 3, "all")
    refit, info = reconstruct(model, full, x, held)
    assert info.underdetermined == [0, 1, 2]
    assert all(torch.isfinite(p).all() for p in refit.parameters())
    for b in range(3):  # what the data cannot see stays at the plain slice
        assert (refit.blocks[b].mlp.fc2.weight - model.blocks[b].mlp.fc2.weight).abs().max() <= 1e-5


def test_ridge_is_chosen_on_held_out_images_and_reported():
    model = tiny_vit()
    x, held = _calib(25)
    _, info = reconstruct(model, _mask(model, 0.5), x, held)
    js = info.to_json()
    assert len(js["blocks"]) == 3 and js["seconds"] >= 0
    for f in info.blocks:
        assert f.ridge is None or f.ridge in RIDGES
        assert f.tokens == 25 * 17 and f.heldout_tokens == 5 * 17
        assert f.heldout_error["lsq"] <= f.heldout_error["slice"] + 1e-12  # the slice is a candidate


def test_compensations_and_calibration_set(model_dir, fashion_dir):
    from vitprune.data import load_data, model_transform, select_per_class
    from vitprune.model.load import load_model
    from vitprune.prune import COMPENSATIONS
    from vitprune.prune.compensate import load_compensation

    model = load_model(model_dir)
    pools = load_data("demo")
    calib = select_per_class(pools.calibration, 3, num_classes=10)
    cal = calibration_set(calib, model_transform(model), batch_size=4)
    assert len(cal) == 30 and cal.heldout.tolist() == heldout_positions(30).tolist()
    mask = _mask(model, 0.5)
    none = load_compensation("none")(model, mask, CompensationInputs())
    lsq = least_squares(model, mask, CompensationInputs(calibration=cal))
    assert none.reconstruction is None and lsq.reconstruction is not None and len(lsq.reconstruction.blocks) == 3
    assert adapter_for(lsq.model).hidden_widths == adapter_for(none.model).hidden_widths == mask.kept_counts
    assert COMPENSATIONS.entry("lsq").meta["needs"] == ("calibration",)
    with pytest.raises(Exception, match="--compensate"):
        load_compensation("bogus")


def test_layer_scale_models_refit_in_fc2_space():
    """With layer scale (ls2) the output target is mapped back through gamma: keep-all stays exact, pruning improves."""
    model = tiny_vit(init_values=0.5)
    with torch.no_grad():
        for blk in model.blocks:
            blk.ls2.gamma.uniform_(0.2, 1.0)
    x, held = _calib(30)
    widths = adapter_for(model).hidden_widths
    same, _ = reconstruct(model, from_keep_sets(widths, [list(range(w)) for w in widths], "all"), x, held, target="output")
    test = tiny_images(4, seed=9)
    with torch.no_grad():
        assert (same(test) - model(test)).abs().max() <= 1e-5
    mask = _mask(model, 0.75)
    refit, _ = reconstruct(model, mask, x, held, target="output")
    with torch.no_grad():
        dense = model(x)
        assert (refit(x) - dense).pow(2).mean() < (slice_sites(model, mask)(x) - dense).pow(2).mean()


def test_readout_weighting_weighs_the_cls_token_like_all_patches():
    from vitprune.prune.lsq import token_weights

    model = tiny_vit()
    w = token_weights(adapter_for(model), 17, "readout")
    assert w[0] == 16 and torch.all(w[1:] == 1)
    assert torch.all(token_weights(adapter_for(tiny_vit(global_pool="avg")), 17, "readout") == 1)  # avg pool: uniform
