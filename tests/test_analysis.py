"""`vitprune analyze`: path edits equal weight surgery, the lens reproduces the logits, similarity is a
proper similarity, every figure is a PNG, and the four commands run end to end on a tiny run."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from vitprune.analysis import (class_mode_paths, class_similarity, edit_masks, edited_logits, label_units,
                               lens_statistics, preferred_position, resolve_readout)
from vitprune.analysis.lens import capture_sites
from vitprune.analysis.plots import path_violin
from vitprune.app.cli import main
from vitprune.discovery.records import PathRecord
from vitprune.errors import UserError

from .helpers import last_line, save_tiny_fashion_model, tiny_images, tiny_vit

PNG = b"\x89PNG\r\n\x1a\n"


def _zeroed(model, path_units: list[list[int]], factor: float = 0.0):
    """A copy of ``model`` with fc2 columns of the path units scaled (hook-free reference)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for b, units in enumerate(path_units):
            idx = torch.as_tensor(sorted(set(units)))
            ref.blocks[b].mlp.fc2.weight[:, idx] *= factor
    return ref


# ------------------------------------------------------------------------------------ edits
def test_remove_and_enhance_equal_scaled_fc2_columns_per_row():
    model = tiny_vit(dtype=torch.float64)
    x = tiny_images(3, dtype=torch.float64)
    paths = torch.tensor([[[1, 5], [0, 7], [3, 3]], [[2, 60], [9, 8], [40, 1]], [[63, 0], [5, 6], [7, 8]]])
    for op, factor in (("remove", 0.0), ("enhance", 2.0)):
        got = edited_logits(model, x, paths, op, token_scope="all")
        for i in range(3):
            want = _zeroed(model, paths[i].tolist(), factor)(x[i : i + 1])
            torch.testing.assert_close(got[i : i + 1], want, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(edited_logits(model, x, paths, "remove", token_scope="all"), model(x))


def test_cls_scope_edits_only_the_cls_token():
    model = tiny_vit(dtype=torch.float64)
    x = tiny_images(2, dtype=torch.float64)
    path = [[1, 2], [3, 4], [5, 6]]
    cls_only = edited_logits(model, x, path, "remove", token_scope="cls")
    everywhere = _zeroed(model, path)(x)
    assert not torch.allclose(cls_only, everywhere)
    assert all(not blk.mlp.fc2._forward_pre_hooks for blk in model.blocks)  # hooks are always removed


def test_keep_only_fraction_zero_is_noop_and_one_zeroes_all_others():
    model = tiny_vit()
    x = tiny_images(2)
    path = torch.tensor([[4, 9], [0, 1], [33, 2]])
    with torch.no_grad():
        clean = model(x)
    assert torch.equal(edited_logits(model, x, path, "keep-only", token_scope="all", keep_fraction=0.0), clean)
    width = model.blocks[0].mlp.fc2.in_features
    others = [[u for u in range(width) if u not in set(units)] for units in path.tolist()]
    want = _zeroed(model.double(), others)(x.double())
    got = edited_logits(model.double(), x.double(), path, "keep-only", token_scope="all", keep_fraction=1.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_keep_only_mask_zeroes_a_seeded_fraction_of_other_units():
    paths = torch.tensor([[[0, 0], [1, 2]], [[5, 6], [7, 8]]])  # a duplicated unit keeps only itself
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    masks = edit_masks(paths, [20, 20], "keep-only", keep_fraction=0.5, generator=gen())
    again = edit_masks(paths, [20, 20], "keep-only", keep_fraction=0.5, generator=gen())
    assert all(torch.equal(a, b) for a, b in zip(masks, again))
    for layer, mask in enumerate(masks):
        for row in range(2):
            kept = set(paths[row, layer].tolist())
            assert all(mask[row, u] == 1 for u in kept)
            assert int((mask[row] == 0).sum()) == round(0.5 * (20 - len(kept)))
    with pytest.raises(UserError):
        edit_masks(paths, [20, 20], "keep-only", keep_fraction=1.5)


def test_class_mode_paths_per_slot_ties_to_smallest_index():
    records = [PathRecord(id=str(i), label=c, target=c, path=p) for i, (c, p) in enumerate(
        [(1, [[5, 2]]), (1, [[3, 2]]), (1, [[5, 9]]), (2, [[8, 1]]), (2, [[4, 7]])])]
    assert class_mode_paths(records, "path") == {1: [[5, 2]], 2: [[4, 1]]}


# ------------------------------------------------------------------------------------- lens
def test_lens_last_block_cls_projection_equals_logits_and_sites_add_up():
    model = tiny_vit(dtype=torch.float64)
    x = tiny_images(3, dtype=torch.float64)
    readout = resolve_readout(model)
    with torch.no_grad(), capture_sites(model) as acts:
        logits = model(x)
        last = len(model.blocks) - 1
        torch.testing.assert_close(readout.project(acts[("resid", last)][:, 0]), logits, rtol=1e-10, atol=1e-10)
        for b in range(1, last + 1):
            total = acts[("resid", b - 1)] + acts[("attn", b)] + acts[("mlp", b)]
            torch.testing.assert_close(total, acts[("resid", b)], rtol=1e-10, atol=1e-10)
    assert not any(blk._forward_hooks for blk in model.blocks)


@pytest.mark.parametrize("fc_norm", [None, False])
def test_lens_avg_pooled_readout_equals_logits(fc_norm):
    model = tiny_vit(dtype=torch.float64, global_pool="avg", fc_norm=fc_norm)
    x = tiny_images(3, dtype=torch.float64)
    readout = resolve_readout(model)
    assert readout.pool_uses_fc_norm == (fc_norm is None)
    with torch.no_grad(), capture_sites(model) as acts:
        logits = model(x)
        torch.testing.assert_close(readout.pooled(acts[("resid", len(model.blocks) - 1)]), logits, rtol=1e-10, atol=1e-10)


def test_lens_statistics_match_the_model_at_the_last_block():
    model = tiny_vit(dtype=torch.float64, reg_tokens=2, init_values=0.5)  # registers + LayerScale
    x, y = tiny_images(4, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    stats = lens_statistics(model, [(["a"] * 4, x, y)], quiet=True)
    assert stats["readout_max_abs_error"] < 1e-10 and stats["num_prefix_tokens"] == 3
    with torch.no_grad():
        logits = model(x)
    rank = (logits > logits.gather(1, y[:, None])).sum(1).double()
    assert stats["identifiability"]["resid"]["cls"][-1] == pytest.approx(float((1 - rank / 5).mean()))
    assert stats["cscr"]["image"]["attn"][0] is None and 0 <= stats["cscr"]["image"]["mlp"][1] <= 1


def test_label_units_rank_classes_like_projecting_the_value_vector():
    model = tiny_vit(dtype=torch.float64)
    with torch.no_grad():
        model.norm.bias.zero_()
        model.norm.weight.uniform_(0.5, 1.5)
    labels = label_units(model, k=3)
    readout = resolve_readout(model)
    for b, block in enumerate(model.blocks):
        values = block.mlp.fc2.weight.T  # (M, d): unit m's value vector
        with torch.no_grad():
            direct = readout.project(values) - model.head.bias
        assert torch.equal(labels[b]["top"], direct.topk(3, dim=1).indices)


def test_lens_refuses_distilled_models_and_reads_attention_pools():
    distilled = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                  embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()
    with pytest.raises(UserError, match="distill"):
        resolve_readout(distilled)
    with pytest.raises(UserError, match="distill"):
        lens_statistics(distilled, [(["a"], tiny_images(1), torch.tensor([0]))], quiet=True)
    pooled = tiny_vit(global_pool="map")  # SigLIP's readout: the lens reads through the attention pool
    readout = resolve_readout(pooled)
    stats = lens_statistics(pooled, [(["a", "b"], tiny_images(2), torch.tensor([0, 3]))], quiet=True)
    assert readout.pool == "map" and stats["readout_max_abs_error"] < 1e-5 and "pooled" in stats["identifiability"]["resid"]
    assert len(label_units(pooled, 2)) == len(pooled.blocks)


# ------------------------------------------------------------------------------- similarity
def test_similarity_is_symmetric_with_unit_diagonal():
    rng = np.random.default_rng(0)
    records = [PathRecord(id="x", label=c, target=c, path=rng.integers(0, 16, size=(3, 2)).tolist()) for c in range(4) for _ in range(5)]
    records += [PathRecord(id="y", label=4, target=4, path=r.path) for r in records if r.label == 0]  # a copy of class 0
    res = class_similarity(records, [16, 16, 16], [f"c{i}" for i in range(5)], top=2)
    sim = res["similarity"]
    assert np.array_equal(np.diag(sim), np.ones(5)) and np.array_equal(sim, sim.T)
    assert sim[0, 4] == pytest.approx(1.0)
    assert res["neighbours"][0]["most_similar"][0][0] == "c4"
    assert sorted(res["order"]) == list(range(5))


def test_preferred_position_falls_back_to_median():
    assert preferred_position(np.full(6, 0.25)) == 0.25
    assert abs(preferred_position(np.r_[np.full(20, 0.3), [0.9]]) - 0.3) < 0.05


def test_path_figure_with_degenerate_layer_is_a_png(tmp_path):
    out = path_violin([np.full(5, 0.5), np.array([0.1, 0.2, 0.8])], [0.5, 0.2], tmp_path / "f.png", "t")
    assert out.read_bytes().startswith(PNG)
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def runs(tmp_path_factory, fashion_dir):
    root = tmp_path_factory.mktemp("analysis")
    model = str(save_tiny_fashion_model(root / "model"))
    common = ["--model", model, "--data", "demo", "--per-class", "2", "--topk", "2", "--steps", "2", "--quiet"]
    assert main(["discover", *common, "--out", str(root / "jas")]) == 0
    assert main(["discover", *common, "--method", "influence-pattern", "--out", str(root / "ip")]) == 0
    return root


def _pngs_valid(folder: Path) -> list[Path]:
    pngs = sorted(folder.glob("*.png"))
    assert pngs and all(p.read_bytes().startswith(PNG) for p in pngs)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [".vitprune"]  # the manifest; no temp files left
    assert not list((folder / ".vitprune").glob("staging-*"))
    return pngs


@pytest.mark.slow
def test_cli_end_to_end(runs, tmp_path):
    jas, ip = str(runs / "jas"), str(runs / "ip")
    out = tmp_path / "manipulate"
    assert main(["analyze", "manipulate", "--paths", jas, "--paths", ip, "--eval-per-class", "2",
                     "--keep-fraction", "0.5", "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "manipulate.json").read_text())
    combos = {(r["mode"], r["method"], r["operation"]) for r in report["results"]}
    assert len(combos) == 2 * 3 * 3
    per_image = next(r for r in report["results"] if r["mode"] == "per-image")
    assert per_image["n_images"] == 20 and per_image["n_classes"] == 10
    assert (out / "manipulate.csv").is_file() and (out / "manipulate_per_class.csv").is_file()
    assert {p.name for p in _pngs_valid(out)} == {"manipulate_per-image.png", "manipulate_class.png"}

    assert main(["analyze", "scores", "--paths", jas, "--paths", ip]) == 0  # default --out
    out = runs / "jas" / "analysis" / "scores"
    scores = json.loads((out / "scores.json").read_text())
    assert [m["method"] for m in scores["methods"]] == ["jas", "activation", "influence-pattern"]
    assert all(c["n_pairs"] == 20 for c in scores["comparisons"])
    assert (out / "scores.csv").is_file() and _pngs_valid(out)

    out = tmp_path / "similarity"
    assert main(["analyze", "similarity", "--paths", jas, "--classes", "0,3", "--quiet", "--out", str(out)]) == 0
    sim = json.loads((out / "similarity.json").read_text())
    assert len(sim["similarity"]) == 10 and sim["class_names"][0] == "T-shirt/top"
    assert {p.name for p in _pngs_valid(out)} == {"similarity_heatmap.png", "paths_0_T-shirt-top.png", "paths_3_Dress.png"}
    assert (out / "similarity.csv").is_file() and (out / "neighbours.csv").is_file()

    out = tmp_path / "lens"
    assert main(["analyze", "lens", "--paths", jas, "--quiet", "--out", str(out)]) == 0
    lens = json.loads((out / "lens.json").read_text())
    assert lens["readout_max_abs_error"] < 1e-4 and lens["images"] == 20
    assert set(lens["path_units"]["self_fraction"]) == {str(c) for c in range(10)}
    assert {p.name for p in _pngs_valid(out)} == {"lens_identifiability.png", "lens_cscr.png", "lens_path_labels.png"}


@pytest.mark.slow
def test_cli_user_errors(runs, tmp_path, capsys):
    jas = str(runs / "jas")
    m5 = str(save_tiny_fashion_model(tmp_path / "m5", num_classes=5))
    for argv, fragment in (
        (["analyze", "scores", "--paths", jas, "--paths", jas, "--out", str(tmp_path / "s")], "two jas runs"),
        (["analyze", "manipulate", "--paths", jas, "--ops", "prune", "--out", str(tmp_path / "m")], "--ops"),
        (["analyze", "similarity", "--paths", str(tmp_path / "missing")], "not a folder"),
        # another model than the run's is refused
        (["analyze", "lens", "--paths", jas, "--data", "fashion-mnist", "--model", m5, "--out", str(tmp_path / "o"), "--quiet"],
         "discovered on another model"),
        # an output over the model it reads
        (["analyze", "lens", "--paths", jas, "--model", m5, "--out", str(tmp_path), "--quiet"], "overlaps the input"),
    ):
        assert main(argv) == 2, argv
        assert fragment in last_line(capsys.readouterr().err), argv


@pytest.mark.slow
@pytest.mark.parametrize("what", ["manipulate", "scores", "similarity", "lens"])
def test_every_analyze_command_takes_the_options_it_uses_and_no_other(runs, tmp_path, what, capsys):
    """Each analysis lists only what it reads: images and a model for manipulate and lens, a model (widths) for
    similarity, the records alone for scores; an option it does not use is a one-line usage error."""
    jas = str(runs / "jas")
    model = json.loads((runs / "jas" / "config.json").read_text())["model"]["source"]["spec"]
    uses = {"manipulate": ["--model", model, "--data", "demo", "--device", "cpu", "--batch-size", "8", "--ops", "remove",
                           "--mode", "per-image"],
            "lens": ["--model", model, "--data", "demo", "--device", "cpu", "--batch-size", "8"],
            "similarity": ["--model", model], "scores": []}[what]
    assert main(["analyze", what, *uses, "--quiet", "--paths", jas, "--out", str(tmp_path / what)]) == 0
    assert any((tmp_path / what).glob("*.json"))
    if what != "manipulate":
        unused = "--batch-size" if what in ("scores", "similarity") else "--ops"
        assert main(["analyze", what, "--paths", jas, unused, "8", "--out", str(tmp_path / "x")]) == 2
        assert "unrecognized arguments" in last_line(capsys.readouterr().err)
