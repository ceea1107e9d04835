"""What discovery costs: compress's cheaper default (and --faithful-discovery), the FLOP count, and where it is reported."""
from __future__ import annotations

import json

import pytest
import torch

from vitprune.app.cli import build_parser, main
from vitprune.defaults import DISCOVERY_DEFAULT, FAITHFUL_DISCOVERY
from vitprune.discovery.engine import PassStats
from vitprune.discovery.finder import PathFinder
from vitprune.discovery.settings import DiscoverySettings
from vitprune.errors import UserError
from vitprune.options import CompressOptions, EvaluateOptions
from vitprune.prune.macs import count_macs_params
from vitprune.reports import render_report

from .helpers import tiny_images, tiny_vit


def test_compress_and_evaluate_discover_at_the_study_default_and_faithful_restores_the_reference():
    assert FAITHFUL_DISCOVERY["steps"] == 20  # the reference's m
    assert DISCOVERY_DEFAULT["steps"] < FAITHFUL_DISCOVERY["steps"]
    assert CompressOptions(keep_topk=5).resolve().steps == DISCOVERY_DEFAULT["steps"]
    assert CompressOptions(keep_topk=5, faithful_discovery=True).resolve().steps == FAITHFUL_DISCOVERY["steps"]
    assert CompressOptions(keep_topk=5, steps=7).resolve().steps == 7
    assert CompressOptions(keep_topk=5, paths="run").resolve().steps is None  # the run's own
    assert EvaluateOptions().steps == DISCOVERY_DEFAULT["steps"]
    parser = build_parser()
    assert parser.parse_args(["discover", "--out", "x"]).steps == 20  # discover keeps the reference's semantics
    assert parser.parse_args(["evaluate", "--out", "x"]).steps == DISCOVERY_DEFAULT["steps"]
    assert parser.parse_args(["compress", "--keep-topk", "5", "--faithful-discovery"]).faithful_discovery


def test_faithful_discovery_is_never_silently_overridden(capsys):
    with pytest.raises(UserError, match="--faithful-discovery runs the reference's m = 20"):
        CompressOptions(keep_topk=5, faithful_discovery=True, steps=4).resolve()
    assert CompressOptions(keep_topk=5, faithful_discovery=True, steps=20).resolve().steps == 20
    with pytest.raises(UserError, match="with --paths the run's own settings"):
        CompressOptions(keep_topk=5, faithful_discovery=True, paths="run").resolve()
    assert main(["compress", "--keep-topk", "5", "--faithful-discovery", "--steps", "8", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--faithful-discovery" in err


@pytest.mark.parametrize("scope", ["cls", "all"])
def test_flop_count_is_the_counted_block_rows(scope):
    model = tiny_vit()
    x, y = tiny_images(2), torch.tensor([1, 3])
    costs = {}
    for m in (2, 8):
        finder = PathFinder(model, DiscoverySettings(topk=2, steps=m, token_scope=scope, max_rows=1000))
        finder.find(x, y)
        s = finder.stats
        macs, _ = count_macs_params(model)
        want = 2 * macs / 3 * (s.block_rows + s.backward_block_rows + 2 * s.tangent_block_rows)
        assert finder.flop_count() == pytest.approx(want) and want > 0
        cost = finder.cost(2.0)
        assert cost["images"] == 2 and cost["images_per_s"] == 1.0
        assert cost["flop_per_image"] == pytest.approx(want / 2)
        assert "GFLOP/img" in finder.describe_cost()
        costs[m] = cost["flop_per_image"]
    # the scaled rows dominate: four times the steps cost nearly four times the FLOPs (the clean forward does not scale)
    assert 3.0 < costs[8] / costs[2] < 4.0
    assert PassStats().flops(100, 2) == 0


def test_the_report_states_the_discovery_cost():
    base = {"method": "jas", "topk": 5, "steps": 4, "token_scope": "all", "objective": "prob", "precision": "fp32",
            "run": "out/paths", "images": 160}
    from vitprune.reports import _discovery_lines

    line = _discovery_lines({**base, "cost": {"images": 160, "seconds": 8.0, "flop_per_image": 2.5e9, "images_per_s": 20.0}})[0]
    assert "m = 4 steps" in line and "2.5 GFLOP per image" in line and "20 images/s" in line
    assert "records reused" in _discovery_lines({**base, "cost": None})[0]
    assert _discovery_lines(None) == []


@pytest.mark.slow
def test_compress_reports_discovery_flops_and_rate(model_dir, tmp_path, fashion_dir):
    out = tmp_path / "c"
    assert main(["compress", "--model", model_dir, "--keep-topk", "2", "--data", "demo", "--per-class", "2",
                 "--eval-per-class", "5", "--no-export", "--quiet", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    d = r["discovery"]
    assert d["steps"] == DISCOVERY_DEFAULT["steps"]
    assert d["cost"]["images"] == 20 and d["cost"]["flop_per_image"] > 0 and d["cost"]["images_per_s"] > 0
    assert "GFLOP per image" in (out / "report.md").read_text()
    assert "GFLOP per image" in render_report(r)
