"""The writer discipline, for every command and the Python API: --force replaces and never destroys first (a killed
--force run leaves the previous result byte-identical), a result is identified by what it was made from (weights and
images, not spec strings), the API's writers follow the command line's rules, a folder is vitprune's by its manifest
and belongs to one command, tampered or linked contents are never followed, records keep their provenance."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vitprune
from vitprune.app.cli import main
from vitprune.errors import UserError
from vitprune.outdir import META

from .helpers import last_line, save_tiny_fashion_model

FAST = ["--data", "demo", "--classes", "0-1", "--per-class", "2"]
EV = [*FAST, "--eval-per-class", "2"]  # compress and evaluate


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a result (vitprune's bookkeeping aside), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and META not in p.relative_to(folder).parts}


def _spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "vitprune", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """kill -9 ``proc`` as soon as ``ready()`` holds; False when the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False


# ------------------------------------------------------------------------------ replace, never destroy first
@pytest.mark.slow
@pytest.mark.parametrize("command", ["compress", "evaluate", "discover", "analyze"])
def test_a_killed_force_run_leaves_the_previous_result_byte_identical(command, model_dir, tmp_path, fashion_dir):
    slow = ["--steps", "20", "--max-rows", "1"]  # seconds of discovery: time to kill it at several moments
    run = tmp_path / "run"
    if command == "analyze":
        assert main(["discover", "--model", model_dir, *FAST, "--topk", "2", "--steps", "2", "--quiet", "--out", str(run)]) == 0
    argv = {
        "compress": ["compress", "--model", model_dir, *EV, "--sparsity", "0.5", "--latency-rounds", "1", "--quiet"],
        "evaluate": ["evaluate", "--model", model_dir, *EV, "--criterion", "jas-freq,magnitude", "--compensate", "none",
                     "--sparsity", "0.5", "--quiet"],
        "discover": ["discover", "--model", model_dir, *FAST, "--topk", "2", "--quiet"],
        "analyze": ["analyze", "lens", "--paths", str(run), "--quiet"],
    }[command]
    changed = {"compress": ["--sparsity", "0.7", *slow], "evaluate": ["--sparsity", "0.7", *slow],
               "discover": ["--topk", "3", "--batch-size", "1", *slow],
               "analyze": ["--per-class", "1"]}[command]
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 0
    before = snapshot(out)
    nxt = out / META / "next"
    moments = {  # when to kill the --force run: its work under way, then its result nearly complete
        "compress": [lambda: any(nxt.glob("paths/paths.partial.jsonl")), lambda: (nxt / "model.safetensors").exists()],
        "evaluate": [lambda: any(nxt.glob("paths-*/paths.partial.jsonl")), lambda: (nxt / "points.jsonl").exists()
                     and (nxt / "points.jsonl").read_text().count("\n") >= 1],
        "discover": [lambda: (nxt / "paths.partial.jsonl").exists(),
                     lambda: (nxt / "paths.partial.jsonl").exists() and (nxt / "paths.partial.jsonl").read_text().count("\n") >= 2],
        "analyze": [lambda: nxt.exists()],
    }[command]
    killed = 0
    for ready in moments:
        killed += _kill_when(_spawn([*argv, *changed, "--out", str(out), "--force"]), ready)
        assert snapshot(out) == before  # whatever stopped the run, the previous result is intact
    assert killed >= 1
    assert main([*argv, *changed, "--out", str(out), "--force"]) == 0  # the replacement itself, completed
    assert snapshot(out) != before and not nxt.exists()


def test_force_on_the_same_settings_recomputes_and_keeps_foreign_entries_out(model_dir, tmp_path, fashion_dir):
    out = tmp_path / "c"
    argv = ["compress", "--model", model_dir, *EV, "--sparsity", "0.5", "--criterion", "magnitude", "--compensate", "none",
            "--no-export", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    report = (out / "report.json").read_text()
    assert main(argv) == 0 and (out / "report.json").read_text() == report  # up to date: nothing recomputed
    assert main([*argv, "--force"]) == 0
    assert json.loads((out / "report.json").read_text())["timings"] != json.loads(report)["timings"]


# --------------------------------------------------------------------------------------- identity by content
def test_changed_weights_or_images_behind_the_same_spec_are_detected(tmp_path, fashion_dir, capsys):
    model = tmp_path / "mymodel"
    save_tiny_fashion_model(model, seed=0)
    argv = ["evaluate", "--model", str(model), *EV, "--criterion", "magnitude", "--compensate", "none", "--sparsity", "0.5",
            "--quiet", "--out", str(tmp_path / "e")]
    assert main(argv) == 0
    save_tiny_fashion_model(model, seed=1)  # other weights, the same spec
    assert main(argv) == 2
    assert "model_fingerprint" in last_line(capsys.readouterr().err)
    # the API: another model in memory into the same sweep is refused like other settings
    a, b = vitprune.load_model(str(tmp_path / "mymodel")), vitprune.load_model("demo")
    kw = dict(criterion="magnitude", compensate="none", sparsity=0.5, per_class=2, classes=(0, 1), eval_per_class=2, quiet=True,
              export=False)
    vitprune.compress(a, "demo", out=tmp_path / "o", **kw)
    with pytest.raises(UserError, match="model_fingerprint"):
        vitprune.compress(b, "demo", out=tmp_path / "o", **kw)


def test_an_analysis_of_another_run_behind_the_same_folder_is_another_analysis(tmp_path, fashion_dir, capsys):
    run = tmp_path / "run"
    args = ["--data", "demo", "--per-class", "1", "--classes", "0,1", "--steps", "2", "--topk", "2", "--quiet"]
    assert main(["discover", "--model", "demo", *args, "--out", str(run)]) == 0
    out = ["--out", str(tmp_path / "scores")]
    assert main(["analyze", "scores", "--paths", str(run), "--quiet", *out]) == 0
    assert main(["analyze", "scores", "--paths", str(run), "--quiet", *out]) == 0  # the same run: a rerun
    assert main(["discover", "--model", "zoo:eva", *args, "--out", str(run), "--force"]) == 0  # another model's run, same name
    capsys.readouterr()
    assert main(["analyze", "scores", "--paths", str(run), "--quiet", *out]) == 2
    assert "different settings (runs)" in last_line(capsys.readouterr().err)  # the runs' identity differs


def test_changed_images_behind_an_image_folder_spec_are_detected(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(5):
            Image.new("L", (28, 28), color=40 * i + c).save(root / f"c{c}" / f"{i}.png")
    model = save_tiny_fashion_model(tmp_path / "m", num_classes=2)
    argv = ["evaluate", "--model", str(model), "--data", f"imagefolder:{root}", "--per-class", "2", "--criterion", "magnitude",
            "--compensate", "none", "--sparsity", "0.5", "--quiet", "--out", str(tmp_path / "e")]
    assert main(argv) == 0
    time.sleep(0.01)
    Image.new("L", (28, 28), color=255).save(root / "c1" / "4.png")  # one evaluation image replaced, same name
    assert main(argv) == 2
    assert "data_digest" in last_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------ the API's writers
@pytest.fixture(scope="module")
def result(tmp_path_factory):
    model = save_tiny_fashion_model(tmp_path_factory.mktemp("api") / "m")
    return vitprune.compress(str(model), "demo", sparsity=0.5, criterion="magnitude", compensate="none", per_class=2,
                             classes=(0, 1), eval_per_class=2, quiet=True)


def test_export_onnx_never_replaces_what_vitprune_did_not_write(result, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(UserError, match=r"\.onnx"):
        result.export_onnx(notes)
    paper = tmp_path / "paper.onnx"
    paper.write_text("not a model")
    with pytest.raises(UserError, match="not an ONNX model vitprune wrote"):
        result.export_onnx(paper, force=True)
    assert notes.read_text() == "mine" and paper.read_text() == "not a model"
    with pytest.raises(UserError, match="quantize must be one of"):
        result.export_onnx(tmp_path / "new.onnx", quantize="int4")
    assert not (tmp_path / "new.onnx").exists()  # refused before anything was written
    made = result.export_onnx(tmp_path / "q" / "model.onnx", latency_rounds=0)  # a missing folder is created
    assert made["onnx"]["bytes"] > 0
    with pytest.raises(UserError, match="force"):
        result.export_onnx(tmp_path / "q" / "model.onnx", latency_rounds=0)  # vitprune's, but not this folder's result
    folder = result.save(tmp_path / "saved")
    with pytest.raises(UserError, match=r"\.onnx"):
        result.export_onnx(folder / "model.safetensors")
    assert vitprune.load_model(str(folder)) is not None


@pytest.mark.slow
def test_save_twice_and_export_twice_like_the_readme(result, tmp_path):
    for _ in range(2):  # the README's snippet, run twice
        folder = result.save(tmp_path / "half")
        info = result.export_onnx(folder / "model.onnx", latency_rounds=1)
    report = json.loads((folder / "report.json").read_text())
    assert report["output"] == str(folder) and report["onnx"]["bytes"] == info["onnx"]["bytes"] and report["latency"]
    assert "None" not in (folder / "report.md").read_text().splitlines()[0]
    assert "None" not in result.report.headline()


def test_save_and_sweep_save_never_overwrite_a_users_file(result, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my report")
    with pytest.raises(UserError, match="did not write"):
        result.save(mine, force=True)
    (mine / "results.csv").write_text("my table")
    sweep = vitprune.evaluate("demo", "demo", criterion="magnitude", compensate="none", sparsity=0.5, per_class=1,
                              classes=(0, 1), eval_per_class=1, quiet=True)
    with pytest.raises(UserError, match="did not write"):
        sweep.save(mine)
    assert (mine / "report.md").read_text() == "my report" and (mine / "results.csv").read_text() == "my table"
    sweep.save(tmp_path / "sweep")
    sweep.save(tmp_path / "sweep")  # the same sweep again replaces its own files
    assert (tmp_path / "sweep" / "results.csv").is_file()


# -------------------------------------------------------------------- folders: manifest, one command, links
def test_a_users_project_folder_is_never_adopted(model_dir, tmp_path, capsys, fashion_dir):
    proj = tmp_path / "proj"
    (proj / "analysis").mkdir(parents=True)
    (proj / "config.json").write_text('{"lr": 0.1}')
    (proj / "config.yaml").write_text("lr: 0.1\n")
    assert main(["discover", "--model", model_dir, *FAST, "--steps", "2", "--quiet", "--out", str(proj), "--force"]) == 2
    assert "did not write" in last_line(capsys.readouterr().err)
    assert (proj / "config.json").read_text() == '{"lr": 0.1}' and (proj / "analysis").is_dir()


def test_commands_never_write_into_each_others_folders(model_dir, tmp_path, capsys, fashion_dir):
    comp, run = tmp_path / "c", tmp_path / "run"
    assert main(["compress", "--model", model_dir, *EV, "--sparsity", "0.5", "--no-export", "--quiet", "--out", str(comp)]) == 0
    assert main(["discover", "--model", model_dir, *FAST, "--topk", "2", "--steps", "2", "--quiet", "--out", str(run)]) == 0
    before = snapshot(comp)
    for argv, fragment in (
        (["analyze", "scores", "--paths", str(run), "--out", str(comp), "--force"], "compress result"),
        (["discover", "--model", model_dir, *FAST, "--steps", "2", "--quiet", "--out", str(comp / "paths"), "--force"],
         "belongs to the compress result"),
        (["compress", "--model", model_dir, *EV, "--sparsity", "0.5", "--quiet", "--out", str(run), "--force"], "discover result"),
        (["evaluate", "--model", model_dir, *EV, "--criterion", "magnitude", "--quiet", "--out", str(comp), "--force"],
         "compress result"),
        (["discover", "--model", model_dir, *FAST, "--quiet", "--out", str(comp / META / "x")], ".vitprune"),
    ):
        assert main(argv) == 2, argv
        assert fragment in last_line(capsys.readouterr().err), argv
    assert snapshot(comp) == before
    assert main(["analyze", "scores", "--paths", str(comp / "paths"), "--quiet"]) == 0  # an analysis of a result's own run


def test_tampered_or_linked_contents_are_never_followed(model_dir, tmp_path, capsys, fashion_dir):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "e"
    argv = ["evaluate", "--model", model_dir, *EV, "--criterion", "magnitude", "--compensate", "none", "--sparsity", "0.5",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    manifest = json.loads((out / META / "manifest.json").read_text())
    for bad in ("../victim.txt", str(victim), "."):
        (out / META / "manifest.json").write_text(json.dumps({**manifest, "files": [*manifest["files"], bad]}))
        assert main([*argv, "--sparsity", "0.6", "--force"]) == 2
        assert "damaged" in last_line(capsys.readouterr().err)
    (out / META / "manifest.json").write_text(json.dumps(manifest))
    (out / "points.jsonl").unlink()
    (out / "points.jsonl").symlink_to(victim)
    assert main(argv) == 2
    assert "symbolic link" in last_line(capsys.readouterr().err)
    assert victim.read_text() == "precious"


def test_convert_takes_plain_prefixes_and_carries_the_header_both_ways(model_dir, tmp_path, capsys, fashion_dir):
    run = tmp_path / "run"
    assert main(["discover", "--model", model_dir, *FAST, "--topk", "2", "--steps", "2", "--pool", "evaluation", "--quiet",
                 "--out", str(run)]) == 0
    for prefix in ("../../../victim", "a/b", "../x"):
        assert main(["convert", str(run), str(tmp_path / "ref"), "--prefix", prefix]) == 2
        assert "plain file-name prefix" in last_line(capsys.readouterr().err)
    assert not list(tmp_path.glob("victim*"))
    assert main(["convert", str(run), str(tmp_path / "ref"), "--prefix", "demo"]) == 0
    assert main(["convert", str(tmp_path / "ref"), str(tmp_path / "back")]) == 0
    back = vitprune.load_run(tmp_path / "back")
    assert back.header is not None and [r.id for r in back.records] == [r.id for r in vitprune.load_run(run).records]
    # records discovered on the evaluation pool stay refused after the round trip
    assert main(["compress", "--model", model_dir, *EV, "--sparsity", "0.5", "--paths", str(tmp_path / "back"),
                 "--no-export", "--out", str(tmp_path / "c")]) == 2
    assert "evaluation pool" in last_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------- provenance
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fashion_dir):
    root = tmp_path_factory.mktemp("prov")
    model = save_tiny_fashion_model(root / "m")
    assert main(["discover", "--model", str(model), *FAST, "--topk", "2", "--steps", "2", "--quiet", "--out", str(root / "run")]) == 0
    return root


@pytest.mark.parametrize("damage", ["torn", "duplicate", "header", "setting"])
def test_a_finished_run_is_checked_against_its_own_header(finished_run, tmp_path, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    paths, config = run / "paths.jsonl", run / "config.json"
    lines = paths.read_text().splitlines(keepends=True)
    if damage == "torn":
        paths.write_text("".join(lines[:-1]) + lines[-1][:30])
    elif damage == "duplicate":
        paths.write_text("".join(lines + lines[:1] * 3))
    elif damage == "header":
        header = json.loads(config.read_text())
        header["data"]["num_images"] += 1
        config.write_text(json.dumps(header))
    else:
        first = json.loads(lines[0])
        paths.write_text(json.dumps({**first, "steps": 7}) + "\n" + "".join(lines[1:]))
    with pytest.raises(UserError, match={"torn": "torn", "duplicate": "more than once", "header": "header says",
                                         "setting": "steps=7"}[damage]):
        vitprune.load_run(run)


def test_records_without_a_header_are_of_unknown_provenance(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    (run / "config.json").unlink()
    (run / META).exists() and shutil.rmtree(run / META)
    model = str(finished_run / "m")
    assert main(["compress", "--model", model, *EV, "--sparsity", "0.5", "--paths", str(run), "--steps", "5", "--no-export",
                 "--out", str(tmp_path / "c")]) == 2
    assert "unknown provenance" in last_line(capsys.readouterr().err)  # --steps 5, but the lines say 2
    assert main(["compress", "--model", model, *EV, "--sparsity", "0.5", "--paths", str(run), "--no-export", "--criterion",
                 "jas-freq", "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "unknown provenance" in err
    assert json.loads((tmp_path / "d" / "report.json").read_text())["data"]["overlap"] is None  # no claim of held-out images


# ---------------------------------------------------------------------------------------------- evaluate
def test_several_head_criteria_are_several_rows(model_dir, tmp_path, fashion_dir):
    sweep = vitprune.evaluate(model_dir, "demo", criterion="magnitude", compensate="none", sparsity=(0.5, 0.5), prune="mlp,heads",
                              head_criterion="weight,random,weight", seed=(0,), per_class=1, classes=(0, 1), eval_per_class=1,
                              quiet=True)
    assert [p.head_criterion for p in sweep.points[1:]] == ["weight", "random"]  # repeats are one point
    table = sweep.table()
    assert "magnitude + heads:weight" in table and "magnitude + heads:random" in table
    sweep.save(tmp_path / "s")
    header = (tmp_path / "s" / "results.csv").read_text().splitlines()[0]
    assert "head_criterion" in header and "kept_heads" in header


# ----------------------------------------------------------------------------------------------- export
def test_export_names_the_checkpoints_own_classes_from_anywhere(tmp_path, monkeypatch, fashion_dir, capsys):
    from vitprune.export.onnx import read_metadata

    model = save_tiny_fashion_model(tmp_path / "m")
    assert main(["compress", "--model", str(model), *EV, "--sparsity", "0.5", "--criterion", "magnitude", "--compensate", "none",
                 "--no-export", "--quiet", "--out", str(tmp_path / "c")]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["export", "--model", str(tmp_path / "c"), "--out", "x.onnx"]) == 0
    names = json.loads(read_metadata(elsewhere / "x.onnx")["vitprune.class_names"])
    assert names[0] == "T-shirt/top"
    assert main(["export", "--model", str(tmp_path / "c"), "--out", "x.onnx"]) == 0  # these weights again: up to date
    assert "up to date" in capsys.readouterr().out + capsys.readouterr().err or (elsewhere / "x.onnx").is_file()


# ------------------------------------------------------------------------------------------------- data
def test_data_that_would_break_the_pools_is_refused(tmp_path):
    from PIL import Image
    from torch.utils.data import TensorDataset

    from vitprune.data import load_data

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "a" / "0.png")
    (root / "loop").symlink_to(root)
    with pytest.raises(UserError, match="the dataset"):
        load_data(f"imagefolder:{root}")
    model = save_tiny_fashion_model(tmp_path / "m")
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6) % 2
    same = TensorDataset(x, y)
    with pytest.raises(UserError, match="same object"):
        vitprune.compress(str(model), (same, same), sparsity=0.5, criterion="magnitude", compensate="none")
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="non-finite"):
        vitprune.compress(str(model), (TensorDataset(bad, y), TensorDataset(x, y)), sparsity=0.5, criterion="magnitude",
                          compensate="none", quiet=True)
    with pytest.raises(UserError, match="whole class ids"):
        vitprune.compress(str(model), (TensorDataset(x, y.float()), TensorDataset(x, y)), sparsity=0.5, criterion="magnitude",
                          compensate="none", quiet=True)
    with pytest.raises(UserError, match="empty"):
        vitprune.compress(str(model), (TensorDataset(x[:0], y[:0]), TensorDataset(x, y)), sparsity=0.5)


# ------------------------------------------------------------------------------------------------ API types
@pytest.mark.parametrize("kwargs, fragment", [
    (dict(prune=None), "prune cannot be None"),
    (dict(seed="abc"), "seed takes a whole number"),
    (dict(per_class=2.5), "per_class takes a whole number"),
    (dict(model_args=["x"]), "model_args takes a dict"),
    (dict(classes=[0.5]), "classes takes class ids"),
    (dict(export="yes"), "export takes True or False"),
])
def test_api_types_are_one_message_naming_the_argument(kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        vitprune.compress("demo", "demo", sparsity=0.5, **kwargs)


def test_the_callers_model_is_never_changed(tmp_path, fashion_dir):
    from torch.utils.data import TensorDataset

    model = vitprune.load_model(str(save_tiny_fashion_model(tmp_path / "m", num_classes=2)))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = set(vars(model))
    data = (TensorDataset(torch.randn(8, 1, 28, 28), torch.arange(8) % 2), TensorDataset(torch.randn(4, 1, 28, 28),
                                                                                        torch.arange(4) % 2))
    vitprune.compress(model.half(), data, sparsity=0.5, criterion="magnitude", compensate="none", quiet=True)
    assert model.training and set(vars(model)) == attrs and next(model.parameters()).dtype == torch.float16
    assert all(torch.equal(v.float(), before[k].half().float()) for k, v in model.state_dict().items())
    with torch.device("meta"):
        import timm

        ghost = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, num_classes=2)
    with pytest.raises(UserError, match="meta device"):
        vitprune.compress(ghost, data, sparsity=0.5)


# ------------------------------------------------------------------------------------------------ smaller
def test_smaller_holes(model_dir, tmp_path, capsys, fashion_dir):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                    'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nsparsity: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n')
    assert main(["compress", "--config", str(bomb)]) == 2
    assert "anchor or alias" in last_line(capsys.readouterr().err)
    both = tmp_path / "both.yaml"
    both.write_text("keep-topk: 5\nkeep_topk: 6\n")
    assert main(["compress", "--config", str(both)]) == 2
    assert "twice" in last_line(capsys.readouterr().err)
    assert main(["compress", "--model", model_dir, *EV, "--sparsity", "0.5", "--out", ""]) == 2
    assert "--out is empty" in last_line(capsys.readouterr().err)
    one = save_tiny_fashion_model(tmp_path / "one", num_classes=1)
    assert main(["compress", "--model", str(one), "--data", "demo", "--sparsity", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "2 or more classes" in last_line(capsys.readouterr().err)


def test_a_checkpoints_weights_are_tied_to_its_configuration(tmp_path, capsys, fashion_dir):
    import shutil

    for name in ("a", "b"):
        assert main(["compress", "--model", str(save_tiny_fashion_model(tmp_path / f"m{name}", seed=ord(name))), *EV,
                     "--sparsity", "0.5", "--criterion", "magnitude", "--compensate", "none", "--no-export", "--quiet",
                     "--out", str(tmp_path / name)]) == 0
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    assert main(["export", "--model", str(tmp_path / "a"), "--out", str(tmp_path / "a.onnx")]) == 2
    assert "other weights" in last_line(capsys.readouterr().err)


def test_paths_naming_a_compress_folder_means_its_run(model_dir, tmp_path, fashion_dir):
    comp = tmp_path / "c"
    assert main(["compress", "--model", model_dir, *EV, "--sparsity", "0.5", "--steps", "2", "--no-export", "--quiet",
                 "--out", str(comp)]) == 0
    assert main(["compress", "--model", model_dir, *EV, "--sparsity", "0.75", "--paths", str(comp), "--no-export", "--quiet",
                 "--out", str(tmp_path / "d")]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["discovery"]["run"] == str(comp / "paths")
