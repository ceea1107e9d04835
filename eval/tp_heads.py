"""Torch-Pruning peer for the heads study: attention heads + MLP units pruned by TP itself at MAC budgets.

    HF_HUB_OFFLINE=1 .venv/bin/python eval/tp_heads.py            # -> eval/results/heads/tp_peer.{json,md}
    HF_HUB_OFFLINE=1 .venv/bin/python eval/tp_heads.py --models demo --scopes local   # a subset (overwrites)

The counterpart of eval/heads.py (vitprune ``--prune mlp,heads`` at --target-macs 0.6 / 0.45 / 0.35), on the same
models (eval/zoo.py MODELS + HELD_OUT), the same calibration images (vitprune compress: the first 16 training images
per class, ``select_per_class(pools.calibration, 16)``), the same test images (the first 100 per class of the
evaluation pool) and the same selection images (the last 50 per class of the calibration pool, never calibration
images), with each model's own preprocessing (``model_transform``). One-shot: no fine-tuning, no compensation.

How Torch-Pruning (torch_pruning 1.6.x) is used, per model, importance and budget:

- ``tp.pruner.MetaPruner`` (an alias of ``BasePruner``) on a fresh copy of the dense model, example input one
  calibration image, ``num_heads={blk.attn.qkv: blk.attn.num_heads}``, ``prune_num_heads=True``,
  ``prune_head_dims=False`` (whole heads go, head_dim stays), ``ignored_layers`` = every ``mlp.fc2``, ``head`` and
  ``patch_embed`` (so the residual / embedding-width group is never pruned: only fc1-out/fc2-in and whole heads),
  ``iterative_steps=1``, ``round_to=None``, then ``pruner.step()``.
- Importances: ``tp.importance.GroupTaylorImportance()`` (|w * grad| over the group, the gradients of the mean
  cross-entropy on the 160 calibration images: one backward on the dense model, its .grad copied into each copy
  before the pruner is built) and
  ``tp.importance.GroupMagnitudeImportance(p=2)`` (group L2 norm). Heads are ranked by TP's own rule (the mean of
  the channel importances of the head at proj's input).
- Ratios: one ratio r, ``pruning_ratio = r`` (MLP channels) and ``head_pruning_ratio = min(r, (H-1)/H)`` (TP
  removes ceil(ratio * H) heads per block and silently skips a block when that would be all of them, so the cap
  keeps the MACs monotone in r). ``local``: per-block ranking (TP's default, as its ViT example); ``global``:
  ``global_pruning=True`` (one ranking of all MLP channels, one of all heads). r is chosen on a grid (0, 0.1, ..., 0.9, 0.98),
  then bisected (10 steps) to the largest MAC ratio <= the budget; every candidate is really pruned and counted.
  ``local-k``: local, but the head ratio decoupled: for each k heads removed per block (head_pruning_ratio
  (k - 0.5) / H), the MLP ratio that fits the budget; k picked by top-1 on the selection images.
- After ``step()``: ``attn.num_heads = qkv.out_features // (3 * head_dim)``
  (= ``pruner.num_heads[attn.qkv]``, except where TP skipped a block whose every head it selected: it still
  decrements the dict; such blocks are counted as tp_skipped_head_groups), ``attn.head_dim = qkv.out_features //
  (3 * num_heads)`` (unchanged here), ``attn.attn_dim = num_heads * head_dim`` (timm 1.0.31 reshapes to it, so no
  forward patch is needed), ``attn.scale = head_dim ** -0.5`` (unchanged). The model is then run on the test
  images; a model TP cannot prune (or that fails to run after pruning) gets its error recorded instead.
- MACs: ``vitprune.prune.macs.count_macs_params`` (TP's counter, with its attention hook corrected for pruned heads).
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from zoo import HELD_OUT, MODELS  # noqa: E402

RESULTS = HERE / "results" / "heads"
BUDGETS = (0.6, 0.45, 0.35)
PER_CLASS = 16
EVAL_PER_CLASS = 100
SELECTION = 50
R_MAX = 0.98
BISECT_STEPS = 10
IMPORTANCES = ("taylor", "magnitude")


def failure(exc: Exception, start: float) -> dict:
    """A point that failed: the error's first line, the end of its traceback and the seconds it took."""
    return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300], "trace": traceback.format_exc().splitlines()[-4:],
            "seconds": round(time.time() - start, 1)}


def record(out: dict, spec: str, key: str, budget: float, point: dict) -> None:
    """Keep one point of a variant and print it (its head count k when the variant chose one)."""
    out["points"].setdefault(key, {})[str(budget)] = point
    if "error" in point:
        print(f"{spec} {key} {budget}: {point['error']}", flush=True)
        return
    k = f" k={point['k']}" if "k" in point else ""
    print(f"{spec} {key} {budget}: x{point['macs_ratio']:.3f}{k} r={point['r']:.4f} test {point['test']:.3f} "
          f"heads {point['heads']} mlp {point['mlp']}", flush=True)


def importance(name: str):
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance() if name == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)


def prune(dense, name: str, r: float, scope: str, example, grads: dict | None, head_ratio: float | None = None):
    """A TP-pruned copy of ``dense`` at ratio ``r`` (head ratio ``head_ratio``, default min(r, (H-1)/H))."""
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    if name == "taylor":
        for n, p in model.named_parameters():
            p.grad = grads[n].clone() if n in grads else None
    blocks = list(model.blocks)
    num_heads = {blk.attn.qkv: blk.attn.num_heads for blk in blocks}
    heads = min(blk.attn.num_heads for blk in blocks)
    ignored = [blk.mlp.fc2 for blk in blocks] + [model.head, model.patch_embed]
    pruner = tp.pruner.MetaPruner(
        model, example, importance=importance(name), pruning_ratio=r, global_pruning=(scope == "global"),
        ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=min(r, (heads - 1) / heads) if head_ratio is None else head_ratio, iterative_steps=1, round_to=None)
    head_dims = [blk.attn.head_dim for blk in blocks]
    pruner.step()
    skipped = 0
    for blk, head_dim in zip(blocks, head_dims):
        attn = blk.attn
        attn.num_heads = attn.qkv.out_features // (3 * head_dim)  # whole heads only: head_dim is unchanged
        # TP decrements pruner.num_heads even for a group check_pruning_group then skips (all heads selected): such a
        # block keeps every head while the dict says 0; the layer's real width is what counts
        skipped += pruner.num_heads[attn.qkv] != attn.num_heads
        attn.head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        attn.attn_dim = attn.num_heads * attn.head_dim
        attn.scale = attn.head_dim ** -0.5
        assert attn.proj.in_features == attn.attn_dim, (attn.proj.in_features, attn.attn_dim)
    model.zero_grad(set_to_none=True)
    model.tp_skipped_head_groups = int(skipped)
    return model.eval()


def pruned_at(dense, name: str, scope: str, example, grads: dict | None, dense_macs: int):
    """r -> (TP-pruned copy of ``dense`` at ratio r, its MAC ratio), cached in ``.cache``: every candidate is really
    pruned and counted."""
    from vitprune.prune.macs import count_macs_params

    cache: dict[float, tuple] = {}

    def at(r: float):
        if r not in cache:
            m = prune(dense, name, r, scope, example, grads)
            cache[r] = (m, count_macs_params(m)[0] / dense_macs)
        return cache[r]

    at.cache = cache
    return at


def fit_budget(at, budget: float):
    """(r, model, MAC ratio) of the largest MAC ratio <= ``budget``: a coarse grid (shared by budgets through ``at``'s
    cache), then bisection between the last infeasible and the first feasible r."""
    cache = at.cache
    grid = [0.0, *(round(0.1 * i, 1) for i in range(1, 10)), R_MAX]
    feasible = [r for r in grid if at(r)[1] <= budget]
    if not feasible:
        raise RuntimeError(f"no r in {grid} reaches MACs <= x{budget} (min x{min(at(r)[1] for r in grid):.3f})")
    hi = feasible[0]
    lo = grid[grid.index(hi) - 1]
    for _ in range(BISECT_STEPS):
        mid = round((lo + hi) / 2, 6)
        if at(mid)[1] <= budget:
            hi = mid
        else:
            lo = mid
    # closest feasible point seen (global pruning need not be monotone in r)
    r = max((rr for rr, (_, mr) in cache.items() if mr <= budget), key=lambda rr: (cache[rr][1], -rr))
    model, ratio = cache[r]
    return r, model, ratio


@torch.no_grad()
def top1(model, images, labels, batch: int = 250) -> float:
    correct = 0
    for i in range(0, len(images), batch):
        correct += int((model(images[i:i + batch]).argmax(-1) == labels[i:i + batch]).sum())
    return correct / len(images)


def shape(model) -> dict:
    return {"heads": [blk.attn.num_heads for blk in model.blocks], "mlp": [blk.mlp.fc2.in_features for blk in model.blocks]}


def local_k(out: dict, spec: str, dense, dense_macs: int, example, grads, sel, test) -> None:
    """The ``local-k`` points: TP local pruning with the head ratio decoupled from the MLP ratio. For each k (heads
    removed per block, head_pruning_ratio = (k - 0.5) / H so TP's ceil gives k), the MLP ratio r_k giving the largest
    MAC ratio <= the budget (predicted on a resized copy: TP's local rule keeps int(h * (1 - r)) units per block, and
    checked after pruning); k is picked by top-1 on the selection images (never test images)."""
    import math

    from vitprune.model.load import resize_pruned
    from vitprune.prune.macs import count_macs_params

    heads = [blk.attn.num_heads for blk in dense.blocks]
    hidden = [blk.mlp.fc2.in_features for blk in dense.blocks]
    H = min(heads)
    probe = copy.deepcopy(dense)
    fitted: dict[tuple[float, int], float | None] = {}  # (budget, k) -> r_k (MACs do not depend on the importance)

    def predicted(hr: float, r: float) -> float:
        resize_pruned(probe, {"attn_heads": [h - (math.ceil(hr * h) if hr > 0 else 0) for h in heads],
                              "mlp_hidden": [max(int(h * (1 - r)), 1) for h in hidden]})
        return count_macs_params(probe)[0] / dense_macs

    for name in IMPORTANCES:
        key = f"tp-{name}-local-k"
        for budget in BUDGETS:
            t1 = time.time()
            try:
                candidates = []
                for k in range(H):
                    hr = 0.0 if k == 0 else (k - 0.5) / H
                    if (budget, k) not in fitted:
                        lo, hi = 0.0, 1.0 - 1.0 / min(hidden)  # keep >= 1 unit
                        if predicted(hr, hi) > budget:
                            hi = None
                        else:
                            for _ in range(15):
                                mid = (lo + hi) / 2
                                lo, hi = (lo, mid) if predicted(hr, mid) <= budget else (mid, hi)
                        fitted[(budget, k)] = hi
                    hi = fitted[(budget, k)]
                    if hi is None:
                        continue
                    model = prune(dense, name, hi, "local", example, grads, head_ratio=hr)
                    ratio = count_macs_params(model)[0] / dense_macs
                    candidates.append({"k": k, "r": hi, "head_ratio": hr, "macs_ratio": ratio, "selection": top1(model, *sel),
                                       "model": model})
                if not candidates:
                    raise RuntimeError(f"no heads-per-block choice reaches MACs <= x{budget}")
                best = max(candidates, key=lambda c: (c["macs_ratio"] <= budget + 1e-9, c["selection"], -c["k"]))
                model = best.pop("model")
                point = {"r": best["r"], "head_ratio": best["head_ratio"], "k": best["k"], "macs_ratio": best["macs_ratio"],
                         "params": count_macs_params(model)[1], "test": top1(model, *test), "selection": best["selection"],
                         **shape(model), "tp_skipped_head_groups": model.tp_skipped_head_groups,
                         "candidates": [{k: v for k, v in c.items() if k != "model"} for c in candidates],
                         "seconds": round(time.time() - t1, 1)}
            except Exception as exc:  # record, do not crash
                point = failure(exc, t1)
            record(out, spec, key, budget, point)


def run_model(spec: str, pools, scopes: tuple[str, ...]) -> dict:
    import vitprune
    from vitprune.data import materialize, model_transform, select_holdout_per_class, select_per_class
    from vitprune.prune.macs import count_macs_params

    t0 = time.time()
    dense = vitprune.load_model(spec).eval()
    transform = model_transform(dense)
    nc = pools.num_classes
    cal_x, cal_y = materialize(select_per_class(pools.calibration, PER_CLASS, None, num_classes=nc), transform)
    test_x, test_y = materialize(select_per_class(pools.evaluation, EVAL_PER_CLASS, None, num_classes=nc), transform)
    sel_x, sel_y = materialize(select_holdout_per_class(pools.calibration, SELECTION, None, num_classes=nc, skip=PER_CLASS), transform)
    dense_macs, dense_params = count_macs_params(dense)
    out = {"dense": {"test": top1(dense, test_x, test_y), "selection": top1(dense, sel_x, sel_y), "macs": dense_macs,
                     "params": dense_params, "mlp_type": type(dense.blocks[0].mlp).__name__,
                     "prefix_tokens": int(getattr(dense, "num_prefix_tokens", 1)), **shape(dense)},
           "images": {"calibration": len(cal_x), "test": len(test_x), "selection": len(sel_x)}, "points": {}}
    # Taylor gradients: mean cross-entropy on the calibration images, one backward (eval mode)
    dense.zero_grad(set_to_none=True)
    F.cross_entropy(dense(cal_x), cal_y).backward()
    grads = {n: p.grad.detach().clone() for n, p in dense.named_parameters() if p.grad is not None}
    dense.zero_grad(set_to_none=True)
    example = cal_x[:1]
    for scope in scopes:
        if scope == "local-k":
            local_k(out, spec, dense, dense_macs, example, grads, (sel_x, sel_y), (test_x, test_y))
            continue
        for name in IMPORTANCES:
            key = f"tp-{name}-{scope}"
            at = pruned_at(dense, name, scope, example, grads, dense_macs)
            for budget in BUDGETS:
                t1 = time.time()
                try:
                    r, model, ratio = fit_budget(at, budget)
                    point = {"r": r, "macs_ratio": ratio, "params": count_macs_params(model)[1],
                             "test": top1(model, test_x, test_y), "selection": top1(model, sel_x, sel_y), **shape(model),
                             "tp_skipped_head_groups": model.tp_skipped_head_groups,
                             "seconds": round(time.time() - t1, 1)}
                except Exception as exc:  # record, do not crash
                    point = failure(exc, t1)
                record(out, spec, key, budget, point)
            at.cache.clear()
    out["seconds"] = round(time.time() - t0, 1)
    return out


def write(summary: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tp_peer.json").write_text(json.dumps(summary, indent=1) + "\n")
    s = summary["settings"]
    lines = ["# Torch-Pruning peer: heads + MLP units at MAC budgets (one-shot)", "",
             f"Made by `{s['command']}` ({s['seconds']:.0f} s on {s['machine']}; torch_pruning {s['torch_pruning']}, "
             f"timm {s['timm']}, torch {s['torch']}).{' ' + s['seconds_note'] + '.' if s.get('seconds_note') else ''}", "",
             f"Top-1 (%) on {EVAL_PER_CLASS} test images per class (in brackets: {SELECTION} held-out training images per class) "
             f"and the achieved MAC ratio (`x`), {PER_CLASS} calibration images per class, no fine-tuning or compensation. "
             "TP MetaPruner with num_heads / prune_num_heads=True / prune_head_dims=False, fc2 + head + patch_embed ignored "
             "(embedding width kept), pruning_ratio = r, head_pruning_ratio = min(r, (H-1)/H), r set (grid, then bisection) to the largest MAC "
             "ratio <= the budget. `local`: per-block ranking (TP's ViT example); `global`: global_pruning=True (one ranking of "
             "all MLP channels, one of all heads); `local-k`: local, head ratio decoupled: k heads removed per block and the MLP "
             "ratio that fits the budget, k picked on the selection images. The `vitprune` row (when eval/results/heads/"
             "summary.json has the model) is its --prune mlp,heads point with the head-criterion default (jas-freq + lsq, "
             "--scope global), for reference. "
             "Compare with eval/results/heads/summary.md (vitprune --prune mlp,heads). Per-block heads / MLP widths are in "
             "tp_peer.json. `*`: TP's global head ranking selected every head of a block, check_pruning_group then silently "
             "skipped that block, which keeps all its heads (TP still decrements its num_heads dict).", ""]
    for m, row in summary["per_model"].items():
        if "error" in row:
            lines += [f"## {m}", "", f"Failed: `{row['error']}`", ""]
            continue
        d = row["dense"]
        errors = {p.get("error") for pts in row["points"].values() for p in pts.values()}
        if None not in errors:  # every point failed: one line, not a table of the same error
            lines += [f"## {m} (dense {d['test'] * 100:.2f}% ({d['selection'] * 100:.2f}); MLP {d.get('mlp_type', '?')}, "
                      f"{d.get('prefix_tokens', '?')} prefix tokens)", "", f"Torch-Pruning failed at every point: `{'; '.join(sorted(errors))}`."]
            if d.get("mlp_type") == "GluMlp":
                lines.append("TP's dependency graph does not map GluMlp's fc1 (2h outputs, chunked into value and gate and "
                             "multiplied) onto fc2's h inputs: the group's fc2 indices run past h, so the importance fails "
                             "before anything is pruned (heads included: one step prunes all groups).")
            lines.append("")
            continue
        lines += [f"## {m} (dense {d['test'] * 100:.2f}% ({d['selection'] * 100:.2f}); heads {d['heads']}, mlp {d['mlp']})", "",
                  "| | " + " | ".join(f"{b}x MACs" for b in BUDGETS) + " |", "|---|" + "---|" * len(BUDGETS)]
        for key, pts in row["points"].items():
            cells = []
            for b in BUDGETS:
                p = pts.get(str(b))
                if p is None:
                    cells.append("-")
                elif "error" in p:
                    cells.append(f"failed: {p['error'][:120]}")
                else:
                    skip = p.get("tp_skipped_head_groups", 0)
                    cells.append(f"{p['test'] * 100:.2f} ({p['selection'] * 100:.2f}; x{p['macs_ratio']:.3f}; heads {sum(p['heads'])}"
                                 f"/{sum(d['heads'])}{f'; {skip} blocks kept all heads*' if skip else ''})")
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        ref = vitprune_row(m)
        if ref:
            lines.append(ref)
        lines.append("")
    (RESULTS / "tp_peer.md").write_text("\n".join(lines) + "\n")


def vitprune_row(model: str) -> str | None:
    """The vitprune heads-study point of ``model`` with its head-criterion default, from summary.json (or None)."""
    try:
        ref = json.loads((HERE / "results" / "heads" / "summary.json").read_text())
        crit = ref["head_default"]["criterion"]
        pts = ref["per_model"][model]["points"][f"heads:{crit}"]
        cells = [f"{pts[str(b)]['test'] * 100:.2f} ({pts[str(b)]['selection'] * 100:.2f}; x{pts[str(b)]['macs_ratio']:.3f}; heads "
                 f"{sum(pts[str(b)]['kept_heads'])})" if str(b) in pts else "-" for b in BUDGETS]
        return f"| vitprune (heads:{crit}) | " + " | ".join(cells) + " |"
    except (OSError, KeyError, TypeError, ValueError):
        return None


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join((*MODELS, *HELD_OUT)))
    parser.add_argument("--scopes", default="local,global,local-k", help="local, global, local-k (see the docstring)")
    parser.add_argument("--merge", action="store_true", help="keep the other variants already in tp_peer.json")
    parser.add_argument("--out", default=None, help=f"folder for tp_peer.{{json,md}} (default {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args()
    RESULTS = Path(args.out) if args.out else RESULTS
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Unwrapped parameters")
    import timm
    import torch_pruning as tp

    import vitprune

    t0 = time.time()
    pools = vitprune.load_data("demo")
    scopes = tuple(x for x in args.scopes.split(",") if x)
    per_model = {}
    cmd = "HF_HUB_OFFLINE=1 .venv/bin/python eval/tp_heads.py" + ("" if args.models == ",".join((*MODELS, *HELD_OUT)) else f" --models {args.models}") \
        + ("" if args.scopes == "local,global,local-k" else f" --scopes {args.scopes}")
    old = json.loads((RESULTS / "tp_peer.json").read_text()) if args.merge and (RESULTS / "tp_peer.json").exists() else None
    summary = {"per_model": per_model, "budgets": list(BUDGETS),
               "settings": {"command": cmd, "seconds": 0.0, "per_class": PER_CLASS, "eval_per_class": EVAL_PER_CLASS,
                            "selection_per_class": SELECTION, "scopes": list(scopes), "importances": list(IMPORTANCES),
                            "machine": f"{platform.machine()} CPU, 1 torch thread (2 shared cores)",
                            "torch_pruning": importlib.metadata.version("torch-pruning") + f" (tp.__version__ says {tp.__version__})", "timm": timm.__version__, "torch": torch.__version__}}
    for spec in [m for m in args.models.split(",") if m]:
        try:
            per_model[spec] = run_model(spec, pools, scopes)
            prev = (old or {}).get("per_model", {}).get(spec, {})
            if "points" in prev:  # --merge: the other variants' points of an earlier run
                per_model[spec]["points"] = {**{k: v for k, v in prev["points"].items() if k not in per_model[spec]["points"]},
                                             **per_model[spec]["points"]}
        except Exception as exc:
            per_model[spec] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300], "trace": traceback.format_exc().splitlines()[-6:]}
            print(f"{spec}: failed: {per_model[spec]['error']}", flush=True)
        summary["settings"]["seconds"] = time.time() - t0 + ((old or {}).get("settings", {}).get("seconds", 0.0))
        if old:
            summary["settings"]["command"] = old["settings"]["command"] + " ; " + cmd + " --merge"
            summary["settings"]["scopes"] = sorted(set(old["settings"]["scopes"]) | set(scopes))
        write(summary)  # after every model: a partial run leaves its results
    print((RESULTS / "tp_peer.md").read_text())


if __name__ == "__main__":
    main()
