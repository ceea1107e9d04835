"""The hostile-user pass: every bad input ends in one clear line and exit 2 (or a correct result), never a
traceback, a hang, a silently wrong result, or a file that looks finished but is not."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from vitprune.app.cli import main
from vitprune.data import load_data, model_transform, open_image
from vitprune.errors import UserError
from vitprune.discovery.records import PARTIAL, PATHS

from .helpers import save_tiny_fashion_model, tiny_vit, last_line

DISCOVER = ["--per-class", "2", "--topk", "2", "--steps", "2", "--batch-size", "2", "--quiet"]


def _one_line(capsys, fragment: str) -> str:
    err = capsys.readouterr().err
    err = last_line(err)
    assert fragment in err, err
    return err


@pytest.fixture
def folder(tmp_path):
    """An image folder of 3 classes x 3 gray 28x28 PNGs, and a tiny 3-class model that fits it."""
    root = tmp_path / "data"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((28, 28), 40 * c + 10 * i, dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    model = save_tiny_fashion_model(tmp_path / "m", num_classes=3)
    return root, str(model)


def _discover(folder, tmp_path, *extra):
    root, model = folder
    return main(["discover", "--model", model, "--data", f"imagefolder:{root}", *DISCOVER, *extra, "--out", str(tmp_path / "run")])


# ---------------------------------------------------------------------------------------------- images
def _text_renamed_jpg(png):
    png.unlink()
    png.with_suffix(".jpg").write_text("notes.txt, renamed to .jpg")


@pytest.mark.parametrize("damage,fragment", [
    (lambda p: p.write_bytes(b""), "unreadable image"),  # zero bytes
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "unreadable image"),  # truncated
    (lambda p: _text_renamed_jpg(p), "unreadable image"),
])
def test_damaged_images(folder, tmp_path, capsys, damage, fragment):
    damage(folder[0] / "c1" / "0.png")
    assert _discover(folder, tmp_path) == 2
    _one_line(capsys, fragment)
    assert not (tmp_path / "run").exists()


def test_hidden_files_and_folders_are_ignored(folder):
    root, _ = folder
    (root / "c0" / ".DS_Store").write_bytes(b"\x00garbage")
    (root / "c1" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(root / "c1" / ".ipynb_checkpoints" / "0-checkpoint.png")
    pools = load_data(f"imagefolder:{root}")
    assert len(pools.calibration) + len(pools.evaluation) == 9


def test_cmyk_rgba_palette_and_16_bit_images_give_the_right_pixels():
    gray = tiny_vit(img_size=28, patch_size=7, in_chans=1)
    gray.pretrained_cfg = {**gray.pretrained_cfg, "mean": (0.5,), "std": (0.5,)}
    rgb = tiny_vit(img_size=28, patch_size=7)
    t_gray, t_rgb = model_transform(gray), model_transform(rgb)
    values = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) % 256
    eight = Image.fromarray(values.astype(np.uint8), mode="L")
    sixteen = Image.fromarray((values * 257).astype(np.uint16))  # the same picture at 16 bits (PIL mode I;16)
    assert sixteen.mode.startswith("I")
    assert torch.equal(t_gray(sixteen), t_gray(eight))  # scaled, not clipped to white
    color = Image.fromarray(np.stack([values, 255 - values, values // 2], -1).astype(np.uint8), mode="RGB")
    for variant in (color.convert("CMYK"), color.convert("RGBA"), color.convert("P")):
        assert torch.allclose(t_rgb(variant), t_rgb(variant.convert("RGB")))
    assert torch.equal(t_rgb(color.convert("RGBA")), t_rgb(color))  # alpha dropped, colours kept


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels > 2x the limit: PIL refuses to decode
    with pytest.raises(UserError, match="too large to decode"):
        open_image("big.png", path)


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("command,extra,fragment", [
    ("discover", ["--steps", "100000"], "--steps must be between 1 and 1000"),
    ("discover", ["--classes", "2-1"], "--classes"),
    ("discover", ["--classes", "-1"], "--classes"),
    ("discover", ["--per-class", "0"], "--per-class"),
    ("discover", ["--per-class", "-3"], "--per-class"),
    ("discover", ["--max-rows", "0"], "--max-rows"),
    ("discover", ["--steps", "nan"], "--steps"),
    ("compress", ["--sparsity", "nan"], "[0, 1)"),
    ("compress", ["--sparsity", "0.5", "--batch-size", "0"], "--batch-size"),
    ("compress", ["--sparsity", "0.5", "--finetune-epochs", "1", "--finetune-lr", "nan"], "--finetune-lr"),
    ("compress", ["--sparsity", "0.5", "--finetune-per-class", "0"], "--finetune-per-class"),
    ("compress", ["--sparsity", "0.5", "--round-to", "-2"], "--round-to"),
    ("evaluate", ["--sparsities", "0.5,nan"], "--sparsity"),
    ("evaluate", ["--sparsities", "a,b"], "--sparsity"),
    ("evaluate", ["--seeds", "1.5"], "--seed"),
    ("evaluate", ["--seeds", ""], "--seed"),
    ("evaluate", ["--keep-topk", "0", "--criteria", "jas"], "--keep-topk"),
    ("evaluate", ["--eval-per-class", "0"], "--eval-per-class"),
    ("evaluate", ["--selection-per-class", "-1"], "--selection-per-class"),
    ("evaluate", ["--criteria", "jas,bogus"], "--criteria"),
    ("evaluate", ["--compensate", "none,maybe"], "--compensate"),
])
def test_bad_options_are_one_line(model_dir, tmp_path, capsys, fashion_dir, command, extra, fragment):
    out = tmp_path / "o"
    args = [command, "--model", model_dir, "--data", "demo", *extra, "--out", str(out)]
    if command == "compress":
        args.append("--no-export")
    assert main(args) == 2
    _one_line(capsys, fragment)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(model_dir, tmp_path, capsys, fashion_dir):
    assert main(["discover", "--model", model_dir, "--data", "demo", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "no CUDA GPU")


@pytest.mark.parametrize("make", [
    lambda d: (d / "model.safetensors").write_bytes(b""),
    lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:300]),
])
def test_zero_byte_and_truncated_checkpoints(tmp_path, capsys, fashion_dir, make):
    ckpt = save_tiny_fashion_model(tmp_path / "m")
    make(ckpt)
    assert main(["discover", "--model", str(ckpt), "--data", "demo", "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "corrupt")


@pytest.mark.parametrize("suffix", [".npz", ".pth", ".safetensors"])
@pytest.mark.parametrize("size", ["empty", "truncated"])
def test_zero_byte_and_truncated_checkpoint_files(tmp_path, capsys, fashion_dir, suffix, size):
    from .helpers import to_google_npz

    path = tmp_path / f"w{suffix}"
    model = tiny_vit(img_size=28, patch_size=7, in_chans=1, num_classes=10)
    if suffix == ".npz":
        to_google_npz(model, path)
    elif suffix == ".pth":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(b"" if size == "empty" else data[: len(data) // 2])
    assert main(["discover", "--model", str(path), "--data", "demo", "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "corrupt")


# ------------------------------------------------------------------------------------- path records
@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory, fashion_dir):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["discover", "--model", model_dir, "--data", "demo", *DISCOVER, "--out", str(out)]) == 0
    return out


def _compress_with_paths(model, paths, out):
    return main(["compress", "--model", model, "--data", "demo", "--per-class", "2", "--keep-topk", "2", "--criterion", "jas-freq",
                 "--compensate", "none", "--paths", str(paths), "--no-export", "--quiet", "--out", str(out)])


@pytest.mark.parametrize("damage", ["garbage", "array", "binary"])
def test_garbage_lines_in_paths(run, model_dir, tmp_path, capsys, damage):
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (run / PATHS).read_text().splitlines(keepends=True)
    lines[3] = {"garbage": "{not json\n", "array": "[1, 2, 3]\n", "binary": "\udcff\n"}[damage]
    (bad / PATHS).write_bytes("".join(lines).encode("utf-8", "surrogateescape"))
    assert _compress_with_paths(model_dir, bad, tmp_path / "c") == 2
    _one_line(capsys, "line 4 is not a record")


@pytest.mark.slow
def test_torn_last_line_of_a_finished_run_is_damage_not_dropped(run, model_dir, tmp_path, capsys):
    torn = tmp_path / "torn"
    torn.mkdir()
    text = (run / PATHS).read_text()
    (torn / PATHS).write_text(text + text.splitlines()[0][:25])
    assert _compress_with_paths(model_dir, torn, tmp_path / "c") == 2  # a finished file is whole; a torn line is damage
    _one_line(capsys, "torn line")


@pytest.mark.parametrize("overrides,fragment", [({"depth": 2}, "layers but the model has 2 blocks"),
                                                ({"mlp_ratio": 0.5}, "beyond this model's 16 MLP units")])
def test_records_of_another_model(run, tmp_path, capsys, overrides, fragment):
    other = save_tiny_fashion_model(tmp_path / "other", **overrides)
    assert _compress_with_paths(str(other), run, tmp_path / "c") == 2
    _one_line(capsys, fragment)


def test_importance_of_another_model(run, tmp_path, capsys):
    other = save_tiny_fashion_model(tmp_path / "other", mlp_ratio=4.0)  # same depth, wider MLPs: records fit, sums do not
    rc = main(["compress", "--model", str(other), "--data", "demo", "--per-class", "2", "--sparsity", "0.5", "--criterion", "jas",
               "--compensate", "none", "--paths", str(run), "--no-export", "--quiet", "--out", str(tmp_path / "c")])
    assert rc == 2
    _one_line(capsys, "not this model's")


# ------------------------------------------------------------------------------ SIGINT and kill -9
def _interruptible() -> None:
    """SIGINT back to its default in the child: a shell without job control starts background jobs (say
    `make test &`) with SIGINT ignored, and Python keeps an inherited SIG_IGN (as vitprune should)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, out):
    return subprocess.Popen([sys.executable, "-m", "vitprune", *args, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)


def _wait_for(folder, pattern, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not (folder.is_dir() and any(folder.glob(pattern))):
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["discover", "compress", "evaluate"])
def test_sigint_is_one_line_and_the_rerun_finishes(model_dir, tmp_path, fashion_dir, command):
    slow = ["--steps", "20", "--max-rows", "1"]
    args = {"discover": ["discover", "--model", model_dir, "--data", "demo", *DISCOVER, *slow],
            "compress": ["compress", "--model", model_dir, "--data", "demo", "--per-class", "2", "--keep-topk", "2", *slow,
                         "--eval-per-class", "2", "--no-export", "--quiet"],
            "evaluate": ["evaluate", "--model", model_dir, "--data", "demo", "--per-class", "2", "--criteria", "jas",
                         "--sparsities", "0.5", "--compensate", "none", "--eval-per-class", "2", *slow, "--quiet"]}[command]
    out = tmp_path / "o"
    proc = _start(args, out)
    _wait_for(out, PARTIAL if command == "discover" else f"paths*/{PARTIAL}", proc)  # discovery under way
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in last_line(err, "vitprune: interrupted")
    rerun = args + (["--resume"] if command == "discover" else [])
    assert main([*rerun, "--out", str(out)]) == 0
    finished = {"discover": PATHS, "compress": "report.json", "evaluate": "results.json"}[command]
    assert (out / finished).is_file()


@pytest.mark.slow
def test_kill_9_during_onnx_export_leaves_no_onnx_file(tmp_path, fashion_dir, model_dir):
    out = tmp_path / "c"
    args = ["compress", "--model", model_dir, "--data", "demo", "--per-class", "2", "--sparsity", "0.5", "--criterion", "magnitude",
            "--compensate", "none", "--eval-per-class", "2", "--quiet"]
    proc = _start(args, out)
    _wait_for(out / ".vitprune", "staging-*/model.safetensors", proc)  # staged just before the export starts
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not any((out / name).exists() for name in ("model.safetensors", "model.onnx", "report.json"))  # nothing published
    assert main([*args, "--out", str(out)]) == 0  # the same command finishes the job
    report = json.loads((out / "report.json").read_text())
    assert report["onnx"]["parity_max_abs"] <= 1e-4 and (out / "model.onnx").is_file()


@pytest.mark.slow
def test_sigint_during_onnx_export_leaves_no_file(tmp_path, fashion_dir, model_dir):
    ckpt = tmp_path / "c"
    assert main(["compress", "--model", model_dir, "--data", "demo", "--per-class", "2", "--sparsity", "0.5", "--criterion",
                 "magnitude", "--compensate", "none", "--eval-per-class", "2", "--no-export", "--quiet", "--out", str(ckpt)]) == 0
    target = tmp_path / "m.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "vitprune", "export", str(ckpt), "--out", str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)
    _wait_for(tmp_path, ".m.onnx.tmp-*", proc)  # the exporter is writing beside the target
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in last_line(err, "vitprune: interrupted")
    assert not target.exists() and not list(tmp_path.glob(".m.onnx.tmp-*"))
    assert main(["export", str(ckpt), "--out", str(target)]) == 0 and target.is_file()


def test_a_library_error_caused_by_ctrl_c_is_an_interrupt(model_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C inside a library import becomes that library's own error (onnxruntime: ImportError
    "initialization failed" raised from the KeyboardInterrupt); it is still one line and exit 130."""
    import vitprune.api as api

    def interrupted_import(*_, **__):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(api, "export_checkpoint", interrupted_import)
    assert main(["export", model_dir, "--out", str(tmp_path / "m.onnx")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in last_line(err, "vitprune: interrupted")


def test_a_library_error_not_caused_by_ctrl_c_still_raises(model_dir, tmp_path, monkeypatch):
    import vitprune.api as api

    def broken(*_, **__):
        raise ImportError("initialization failed")

    monkeypatch.setattr(api, "export_checkpoint", broken)
    with pytest.raises(ImportError):
        main(["export", model_dir, "--out", str(tmp_path / "m.onnx")])
