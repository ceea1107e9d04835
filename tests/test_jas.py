"""JAS path discovery: the fast engine equals the literal formulas, and its invariants hold."""
from __future__ import annotations

import math

import pytest
import timm
import torch

import vitprune
from vitprune.discovery.finder import PathFinder
from vitprune.discovery.settings import DiscoverySettings
from vitprune.discovery.engine import stable_topk
from vitprune.discovery.memory import DEFAULT_FRACTION, PassMemory
from vitprune.errors import UserError

from .helpers import tiny_images, tiny_vit
from .literal_jas import literal_influence_pattern, literal_jas


def _get(record, key):
    """A field of a PathRecord, or of the literal implementation's dict records."""
    return record[key] if isinstance(record, dict) else getattr(record, key)


def _assert_records_equal(fast, slow, rel=1e-5):
    for f, s in zip(fast, slow, strict=True):
        assert _get(f, "path") == _get(s, "path")
        assert _get(f, "base_path") == _get(s, "base_path")
        assert _get(f, "score") == pytest.approx(_get(s, "score"), rel=rel, abs=1e-12)
        assert _get(f, "base_score") == pytest.approx(_get(s, "base_score"), rel=rel, abs=1e-12)


@pytest.mark.parametrize("topk", [1, 3])
def test_fast_equals_literal_cls(topk):
    model = tiny_vit(dtype=torch.float64)
    x, y = tiny_images(2, dtype=torch.float64), torch.tensor([0, 3])
    fast = vitprune.find_paths(model, x, y, topk=topk, steps=4)
    slow = literal_jas(model, x, y, topk=topk, steps=4, tokens=slice(0, 1))
    _assert_records_equal(fast, slow)


def test_fast_equals_literal_all_tokens_and_chunked_rows():
    model = tiny_vit(dtype=torch.float64, depth=2)
    x, y = tiny_images(2, dtype=torch.float64), torch.tensor([1, 4])
    fast = vitprune.find_paths(model, x, y, topk=2, steps=3, token_scope="all", max_rows=4)
    slow = literal_jas(model, x, y, topk=2, steps=3, tokens=slice(None))
    _assert_records_equal(fast, slow)


def test_fast_equals_literal_average_pooled_patches():
    model = tiny_vit(dtype=torch.float64, depth=2, global_pool="avg")
    x, y = tiny_images(2, dtype=torch.float64), torch.tensor([2, 0])
    fast = vitprune.find_paths(model, x, y, topk=2, steps=3)  # auto scope = patch tokens
    slow = literal_jas(model, x, y, topk=2, steps=3, tokens=slice(1, None))
    _assert_records_equal(fast, slow)


def _tiny_distilled(dtype=torch.float32):
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=3, num_heads=2, mlp_ratio=2.0, num_classes=5).eval().to(dtype)


def test_distilled_cls_scope_equals_literal():
    """The distilled head reads CLS and DIST: both rows are the scope, the last MLP runs on both only."""
    model = _tiny_distilled(torch.float64)
    x, y = tiny_images(2, dtype=torch.float64), torch.tensor([1, 3])
    fast = vitprune.find_paths(model, x, y, topk=2, steps=3, max_rows=3)
    slow = literal_jas(model, x, y, topk=2, steps=3, tokens=slice(0, 2))
    _assert_records_equal(fast, slow)


CACHE_CASES = [
    ("cls", 1, "prob", {}),
    ("cls", 3, "logprob", {}),
    ("all", 2, "prob", {}),
    ("all", 1, "kl", {}),
    ("auto", 2, "prob", dict(global_pool="avg")),
    ("cls", 2, "kl", "distilled"),
]


@pytest.mark.parametrize("scope,topk,objective,model_kind", CACHE_CASES)
@pytest.mark.parametrize("max_rows", [None, 10])
def test_schedules_give_the_records_of_recomputing(scope, topk, objective, model_kind, max_rows):
    """Keeping the prefix, and carrying tangents (scopes of <= 2 tokens), give the records and dense
    scores of recomputing every pass from the images (fp32)."""
    model = _tiny_distilled() if model_kind == "distilled" else tiny_vit(depth=4, **model_kind)
    x, y = tiny_images(4), torch.tensor([0, 3, 1, 4])
    schedules = ["recompute", "kept"] + (["tangent"] if scope == "cls" else [])
    found = {}
    for schedule in schedules:
        finder = PathFinder(model, DiscoverySettings(topk=topk, steps=5, token_scope=scope, objective=objective, max_rows=max_rows))
        finder.schedule = schedule
        found[schedule] = finder.find_batch(x, y)
    want = found["recompute"]
    for schedule in schedules[1:]:
        _assert_records_equal(found[schedule].records, want.records, rel=1e-6)
        for a, b in zip(found[schedule].step_scores + found[schedule].step_own, want.step_scores + want.step_own):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("topk", [1, 3])
def test_tangent_schedule_equals_literal_in_fp64(topk):
    model = tiny_vit(dtype=torch.float64, depth=5)
    x, y = tiny_images(2, dtype=torch.float64), torch.tensor([2, 4])
    finder = PathFinder(model, DiscoverySettings(topk=topk, steps=4, max_rows=4))  # one image per pass
    finder.schedule = "tangent"
    found = finder.find_batch(x, y)
    slow = literal_jas(model, x, y, topk=topk, steps=4, tokens=slice(0, 1))
    _assert_records_equal(found.records, slow, rel=1e-9)
    for i, rec in enumerate(slow):
        for t in range(5):
            torch.testing.assert_close(found.step_scores[t][i], rec["step_scores"][t], rtol=1e-9, atol=1e-15)


def test_tangent_schedule_work(monkeypatch):
    """No backward below the changed block: the tangent passes replace the prefix backwards."""
    L, B, m = 9, 2, 3
    model = tiny_vit(depth=L)
    finder = PathFinder(model, DiscoverySettings(topk=2, steps=m, max_rows=m * B))  # no memory probe
    assert finder.engine.resolved_schedule() == "tangent"  # CLS scope, 9 > 2 * 1 * TANGENT_COST blocks
    assert PathFinder(model, DiscoverySettings(token_scope="all")).engine.resolved_schedule() == "kept"
    assert PathFinder(tiny_vit(depth=2), DiscoverySettings()).engine.resolved_schedule() == "kept"  # 2 < 2 * TANGENT_COST
    counter = _Counter(model, monkeypatch)
    finder.find(tiny_images(B), torch.arange(B))
    counter.remove()
    assert counter.backwards == L + 2
    assert finder.stats.tangent_block_rows == m * B * (L - 1)  # one block per step 0..L-2, one scope token
    # step t >= 1 starts at block t from the carried stream; each backward stops at the block it started from
    tangent_passes = L + sum(L - t for t in range(1, L)) + 1 + L
    assert finder.stats.backward_block_rows == m * B * tangent_passes
    # the counter's hooks make every block fall back: the carried stream and the tangent each run the block
    assert counter.block_rows == B * L + m * B * tangent_passes + 2 * m * B * (L - 1)
    bf16 = PathFinder(model, DiscoverySettings(topk=2, steps=m, precision="bf16")).find(tiny_images(B), torch.arange(B))
    fp32 = vitprune.find_paths(model, tiny_images(B), torch.arange(B), topk=2, steps=m)
    assert all(abs(a.score - b.score) <= 0.05 * abs(b.score) + 1e-6 for a, b in zip(bf16, fp32))


def test_head_tokens_only_and_forward_from_keep_the_logits():
    from vitprune.model.adapter import adapter_for
    from vitprune.model.hooks import block_input, head_tokens_only

    for model in (tiny_vit(), _tiny_distilled()):
        adapter, x = adapter_for(model), tiny_images(3)
        with torch.no_grad():
            want = model(x)
            with head_tokens_only(adapter):
                torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
            for b in range(adapter.depth):
                torch.testing.assert_close(adapter.forward_from(b, block_input(adapter, x, b)), want, rtol=1e-5, atol=1e-6)
        assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="reads tokens"):
        with head_tokens_only(adapter_for(tiny_vit(global_pool="avg"))):
            pass


def test_influence_pattern_equals_literal_and_is_scored_by_jas():
    model = tiny_vit(dtype=torch.float64)
    x, y = tiny_images(2, dtype=torch.float64), torch.tensor([0, 2])
    fast = vitprune.find_paths(model, x, y, topk=2, steps=4, method="influence-pattern")
    paths = literal_influence_pattern(model, x, y, topk=2, steps=4, tokens=slice(0, 1))
    assert [r.path for r in fast] == paths
    from .literal_jas import _clean_acts, literal_path_score

    for i, rec in enumerate(fast):
        acts, _ = _clean_acts(model, x[i : i + 1], slice(0, 1))
        want = literal_path_score(model, x[i : i + 1], int(y[i]), acts, rec.path, 4, slice(0, 1))
        assert rec.score == pytest.approx(want, rel=1e-5)


def test_batch_invariance_b1_vs_b7():
    model = tiny_vit()
    x, y = tiny_images(7), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    together = vitprune.find_paths(model, x, y, topk=2, steps=5)
    alone = [vitprune.find_paths(model, x[i : i + 1], y[i : i + 1], topk=2, steps=5)[0] for i in range(7)]
    _assert_records_equal(together, alone, rel=1e-4)


def test_topk1_equals_top1_greedy_path():
    model = tiny_vit(dtype=torch.float64)
    x, y = tiny_images(3, dtype=torch.float64), torch.tensor([4, 1, 0])
    top1 = literal_jas(model, x, y, topk=1, steps=5, tokens=slice(0, 1))
    topk1 = vitprune.find_paths(model, x, y, topk=1, steps=5)
    _assert_records_equal(topk1, top1)
    # the first entry of a K=3 run is generally NOT the top-1 path (earlier layers contribute all K units)
    assert all(len(layer) == 3 for r in vitprune.find_paths(model, x, y, topk=3, steps=5) for layer in r.path)


def test_pred_label_targets_the_prediction():
    model = tiny_vit()
    x, y = tiny_images(4), torch.tensor([0, 1, 2, 3])
    recs = vitprune.find_paths(model, x, y, steps=3, label="pred")
    assert [r.target for r in recs] == [r.pred for r in recs]
    assert [r.label for r in recs] == [0, 1, 2, 3]


class _Counter:
    """Counts full model forwards, rows through each block (a forward from a cached prefix runs
    only the later blocks) and autograd.grad calls."""

    def __init__(self, model, monkeypatch):
        self.forwards = self.rows = self.block_rows = self.backwards = 0
        self.handles = [model.register_forward_pre_hook(self._on_forward)]
        self.handles += [blk.register_forward_pre_hook(self._on_block) for blk in model.blocks]
        real_grad = torch.autograd.grad

        def counting_grad(*args, **kwargs):
            self.backwards += 1
            return real_grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", counting_grad)

    def _on_forward(self, _module, args):
        self.forwards += 1
        self.rows += args[0].shape[0]

    def _on_block(self, _module, args):
        self.block_rows += args[0].shape[0]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _cached_block_passes(L: int) -> int:
    """Blocks run per scaled row: greedy step 0 runs all L, step t >= 1 runs blocks t-1.. from the
    kept prefix, the path score block L-1 only, the activation baseline's score all L."""
    return L + sum(L - t + 1 for t in range(1, L)) + 1 + L


@pytest.mark.parametrize("method", ["jas", "influence-pattern"])
def test_pass_counts_per_batch(monkeypatch, method):
    model = tiny_vit()
    L, B, m = len(model.blocks), 5, 4
    counter = _Counter(model, monkeypatch)
    finder = PathFinder(model, DiscoverySettings(topk=2, steps=m, method=method))
    finder.schedule = "kept"  # the counts below are the kept prefix's ('auto' carries tangents from 3 blocks on)
    finder.find(tiny_images(B), torch.arange(B) % 5)
    counter.forwards = counter.rows = counter.block_rows = counter.backwards = 0
    found = finder.find_batch(tiny_images(B), torch.arange(B) % 5)
    counter.remove()
    if method == "jas":  # the dense scores of every unit come with the same passes
        assert [s.shape for s in found.step_scores] == [s.shape for s in found.step_own] == [(B, 64)] * L
        # one clean forward, greedy step 0 and the baseline's score from the images; the other
        # greedy steps and the path score start from the kept residual stream
        assert counter.forwards == 3
        assert counter.block_rows == B * L + m * B * _cached_block_passes(L)
        assert counter.backwards == L + 2  # ONE backward per scaled forward, not one per clamped layer
    else:
        assert counter.forwards == 1 + 3
        assert counter.block_rows == B * L + 3 * m * B * L
        assert counter.backwards == 3
    assert finder.stats.block_rows == 2 * counter.block_rows
    assert (finder.stats.forward_calls, finder.stats.backward_calls) == (2 * (L + 3 if method == "jas" else 4), 2 * counter.backwards)


def test_cached_prefix_does_less_work_than_recomputing(monkeypatch):
    """Same passes per step, fewer block-rows: m*(L + sum_t (L-t+1) + 1 + L) against m*L*(L+2)."""
    model = tiny_vit(depth=6)
    L, B, m = 6, 2, 3
    work = {}
    for cached in (True, False):
        counter = _Counter(model, monkeypatch)
        finder = PathFinder(model, DiscoverySettings(topk=1, steps=m, max_rows=m * B))
        finder.schedule = "kept" if cached else "recompute"
        finder.find(tiny_images(B), torch.arange(B))
        counter.remove()
        work[cached] = (counter.block_rows - B * L, counter.backwards, finder.stats.backward_block_rows)
    assert work[False] == (m * B * L * (L + 2), L + 2, m * B * L * (L + 2))
    assert work[True] == (m * B * _cached_block_passes(L), L + 2, m * B * L * (L + 2))  # backwards still reach block 0


def test_max_rows_chunks_every_pass(monkeypatch):
    model = tiny_vit()
    L, B, m, max_rows = len(model.blocks), 3, 4, 5
    counter = _Counter(model, monkeypatch)
    finder = PathFinder(model, DiscoverySettings(topk=1, steps=m, max_rows=max_rows))
    finder.schedule = "kept"  # the counts below are the kept prefix's ('auto' carries tangents from 3 blocks on)
    finder.find(tiny_images(B), torch.arange(B))
    counter.remove()
    # a pass holds one image's m rows: the greedy steps and the path score run per image from the
    # kept prefix; the baseline's score is chunked by rows
    assert counter.backwards == (L + 1) * B + math.ceil(m * B / max_rows)
    assert counter.block_rows == B * L + m * B * _cached_block_passes(L)


def test_rows_below_one_image_recompute_every_pass(monkeypatch):
    model = tiny_vit()
    L, B, m, max_rows = len(model.blocks), 2, 4, 3
    counter = _Counter(model, monkeypatch)
    records = vitprune.find_paths(model, tiny_images(B), torch.arange(B), topk=2, steps=m, max_rows=max_rows)
    counter.remove()
    assert counter.backwards == (L + 2) * math.ceil(m * B / max_rows)
    assert counter.block_rows == B * L + m * B * L * (L + 2)
    _assert_records_equal(records, vitprune.find_paths(model, tiny_images(B), torch.arange(B), topk=2, steps=m), rel=1e-4)


def _hook_count(model):
    return sum(len(mod._forward_pre_hooks) + len(mod._forward_hooks) for mod in model.modules())


def test_hooks_are_always_removed():
    model = tiny_vit()
    vitprune.find_paths(model, tiny_images(2), torch.tensor([0, 1]), steps=2)
    assert _hook_count(model) == 0
    with pytest.raises(AssertionError, match="Input height"):  # fails inside the hooked forward
        vitprune.find_paths(model, tiny_images(2, size=16), torch.tensor([0, 1]), steps=2)
    assert _hook_count(model) == 0
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(topk=0), "--topk"),
        (dict(topk=10_000), "--topk"),
        (dict(steps=0), "--steps"),
        (dict(method="nope"), "--method"),
        (dict(token_scope="cls", model_overrides=dict(global_pool="avg")), "patches"),
        (dict(max_rows=0), "--max-rows"),
    ],
)
def test_bad_options_are_user_errors(kwargs, fragment):
    model = tiny_vit(**kwargs.pop("model_overrides", {}))
    with pytest.raises(UserError, match=fragment):
        vitprune.find_paths(model, tiny_images(1), torch.tensor([0]), **kwargs)


def test_precision_options():
    model = tiny_vit()
    x, y = tiny_images(3), torch.tensor([0, 1, 2])
    fp32 = vitprune.find_paths(model, x, y, topk=2, steps=4)
    assert vitprune.find_paths(model, x, y, topk=2, steps=4, precision="tf32") == fp32  # TF32 is a GPU matmul mode
    bf16 = vitprune.find_paths(model, x, y, topk=2, steps=4, precision="bf16")
    assert [len(r.path) for r in bf16] == [3, 3, 3]
    assert all(abs(a.score - b.score) <= 0.05 * abs(a.score) + 1e-6 for a, b in zip(fp32, bf16))
    with pytest.raises(UserError, match="--precision"):
        vitprune.find_paths(model, x, y, precision="int8")


def test_pass_memory_rows_are_equal_chunks_that_fit():
    mem = PassMemory(fixed=1_000, per_row=100, budget=2_000)  # 10 rows fit
    assert mem.rows(8) == 8
    assert mem.rows(10) == 10
    assert mem.rows(11) == 6  # two equal chunks, not 10 + 1
    assert mem.rows(80) == 10
    assert PassMemory(fixed=5_000, per_row=100, budget=2_000).rows(7) == 1  # never zero


def test_memory_probe_is_linear_in_rows():
    """The CPU count (saved storages + leaves + their gradients) is linear in rows: fixed + per_row * rows."""
    from vitprune.discovery.engine import Goal
    from vitprune.model.hooks import override_ffn
    from vitprune.discovery.memory import PassMeter

    model = tiny_vit()
    finder = PathFinder(model, DiscoverySettings(topk=2, steps=4))
    image, label = tiny_images(1), torch.tensor([1])
    mem = finder.engine.measure_memory(image, label)
    acts, logits = finder.engine.clean_forward(image)
    goal = Goal(label, logits.softmax(-1))
    leaf_bytes = sum(a[0].numel() * a.element_size() for a in acts)
    assert mem.per_row >= 2 * leaf_bytes  # each row holds its clamped leaves and their gradients
    meter = PassMeter(image.device, exclude=[*model.parameters(), *model.buffers()])
    img = torch.zeros(10, dtype=torch.long)
    clamps = {l: finder.engine.path_clamp(a, stable_topk(a.sum(1), 2), img, torch.linspace(0, 1, 10, dtype=torch.float64))
              for l, a in enumerate(acts)}
    with meter.measure(clamps.values()), torch.enable_grad(), override_ffn(finder.adapter, clamps, finder.engine.tokens):
        finder.engine.objective_sum(image[img], goal.rows(img))
    assert abs(meter.bytes - (mem.fixed + 10 * mem.per_row)) <= 16  # exact up to rounding to whole bytes


def test_auto_rows_chunk_to_the_free_memory(monkeypatch):
    """With little memory free, passes are split into equal chunks and the paths do not change."""
    model = tiny_vit()
    x, y = tiny_images(4), torch.tensor([0, 1, 2, 3])
    whole = PathFinder(model, DiscoverySettings(topk=2, steps=5))
    expected = whole.find(x, y)
    assert whole.memory.rows(20) == 20  # everything fits on this machine
    probe = whole.memory
    monkeypatch.setattr("vitprune.discovery.engine.free_bytes",
                        lambda device: int((probe.fixed + 7 * probe.per_row) / DEFAULT_FRACTION) + 1)
    counter = _Counter(model, monkeypatch)
    tight = PathFinder(model, DiscoverySettings(topk=2, steps=5))
    records = tight.find(x, y)
    counter.remove()
    assert tight.memory.rows(20) == 7  # ceil(20 / ceil(20 / 7)) = 7: chunks 7, 7, 6
    # one image (5 rows) per cached group: L greedy passes + the path score each; the baseline in 3 chunks
    assert counter.backwards == (len(model.blocks) + 1) * 4 + 3
    _assert_records_equal(records, expected, rel=1e-4)  # fp32 sums over other chunks: same paths, scores to ~1e-5
