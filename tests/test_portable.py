"""The pruned model outside vitprune: a torch.export program (model.pt2) that runs with torch alone, timm's Hub layout
(config.json) rebuilt with the README's lines, a model card, and the package installed from a wheel."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vitprune
from vitprune.app.cli import main
from vitprune.export.hub import REBUILD

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--data", "demo", "--per-class", "2", "--steps", "2", "--eval-per-class", "5", "--quiet"]
NO_VITPRUNE = "import sys; sys.modules['vitprune'] = None  # import vitprune raises ImportError from here on\n"


def _run_without_vitprune(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", NO_VITPRUNE + code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def readme_block(title: str) -> str:
    """The first ```py block after the README heading ``title`` (py, not python: it needs a folder, so test_readme.py leaves it
    to this file)."""
    text = (ROOT / "README.md").read_text()
    start = text.index(title)
    block = text.index("```py\n", start) + len("```py\n")
    return text[block:text.index("```", block)]


@pytest.fixture(scope="module")
def compressed(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("portable") / "c"
    assert main(["compress", "--model", model_dir, "--target-macs", "0.6", "--prune", "mlp,heads", "--criterion", "taylor", *FAST,
                 "--latency-rounds", "0", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_the_program_runs_with_torch_alone_and_agrees_with_onnx_and_pytorch(compressed, tmp_path):
    images = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "images.npy", images.numpy())
    code = f"""
import numpy as np, torch, onnxruntime as ort
images = torch.from_numpy(np.load("images.npy"))
program = torch.export.load({str(compressed / 'model.pt2')!r}).module()
np.save("program.npy", program(images).detach().numpy())
np.save("program1.npy", program(images[:1]).detach().numpy())  # the batch axis is dynamic
session = ort.InferenceSession({str(compressed / 'model.onnx')!r}, providers=["CPUExecutionProvider"])
np.save("onnx.npy", session.run(None, {{"pixel_values": images.numpy()}})[0])
"""
    done = _run_without_vitprune(code, tmp_path)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        want = vitprune.load_model(str(compressed))(images).numpy()
    program, onnx = np.load(tmp_path / "program.npy"), np.load(tmp_path / "onnx.npy")
    assert np.abs(program - want).max() <= 1e-5 and np.abs(onnx - want).max() <= 1e-4
    assert np.abs(np.load(tmp_path / "program1.npy") - want[:1]).max() <= 1e-5
    report = json.loads((compressed / "report.json").read_text())
    assert report["program"]["file"] == "model.pt2" and report["program"]["parity_max_abs"] <= 1e-4


@pytest.mark.slow
def test_the_readme_lines_rebuild_the_timm_module_from_config_json(compressed, tmp_path):
    lines = readme_block("### Loading without vitprune")
    assert REBUILD.strip() in lines  # the README shows the lines every folder is checked with
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "images.npy", images.numpy())
    assert lines.startswith("folder = ")
    code = f"folder = {str(compressed)!r}\n" + lines.split("\n", 1)[1] + """
import numpy as np
assert type(model).__module__.startswith("timm.")
np.save("rebuilt.npy", model(torch.from_numpy(np.load("images.npy"))).detach().numpy())
"""
    done = _run_without_vitprune(code, tmp_path)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        want = vitprune.load_model(str(compressed))(images).numpy()
    assert np.abs(np.load(tmp_path / "rebuilt.npy") - want).max() <= 1e-5
    config = json.loads((compressed / "config.json").read_text())
    assert config["vitprune"]["timm_rebuild"] is True and config["vitprune"]["attn_heads"] is not None
    assert config["num_classes"] == 10 and len(config["label_names"]) == 10
    assert not {"url", "hf_hub_id", "tag"} & set(config["pretrained_cfg"])  # nothing names weights these are not


@pytest.mark.slow
def test_timm_reads_config_json_as_a_hub_config(compressed):
    from timm.models._hub import load_model_config_from_path

    pretrained_cfg, arch, model_args = load_model_config_from_path(compressed)
    assert arch == "vit_tiny_patch16_224" and pretrained_cfg["num_classes"] == 10
    assert tuple(pretrained_cfg["input_size"]) == (1, 28, 28) and model_args["embed_dim"] == 32


@pytest.mark.slow
def test_the_model_card_says_what_the_model_is(compressed):
    card = (compressed / "README.md").read_text()
    report = json.loads((compressed / "report.json").read_text())
    assert card.startswith("---\nlibrary_name: timm\n")
    assert f"{100 * report['accuracy']['pruned']['top1']:.2f}%" in card and f"{report['macs']['pruned']:,}" in card
    assert "held-out images of `demo`" in card and "## License" in card
    command = card[card.index("```bash\n") + 8:].split("\n")[0]
    assert command.startswith("vitprune compress --model ") and "--target-macs 0.6" in command and "--prune mlp,heads" in command
    # the command the card names asks for the same result: a dry run of it plans the same output settings
    from vitprune.options import CompressOptions  # noqa: F401 - the card's flags are the options' own
    import shlex

    argv = shlex.split(command)[1:]
    assert main([*argv, "--dry-run", "--out", str(compressed)]) == 0


def test_a_model_timm_cannot_rebuild_says_so(tmp_path):
    """EVA-02's attention is sliced into an equivalent timm AttentionRope: the card points to model.pt2 instead."""
    import timm
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4,
                              embed_dim=48, num_heads=4).eval()
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = torch.arange(40) % 4
    result = vitprune.compress(model, (TensorDataset(x[:24], y[:24]), TensorDataset(x[24:], y[24:])), target_macs=0.7,
                               prune="mlp,heads", criterion="taylor", per_class=6, quiet=True)
    folder = result.save(tmp_path / "eva")
    config = json.loads((folder / "config.json").read_text())
    assert config["vitprune"]["timm_rebuild"] is False
    assert "timm alone cannot rebuild this module" in (folder / "README.md").read_text()
    program = torch.export.load(str(folder / "model.pt2")).module()
    with torch.no_grad():
        assert torch.allclose(program(x[:3]), result.model(x[:3]), atol=1e-5)


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_repository(tmp_path):
    """pip builds a wheel; installed (--no-deps) into a fresh folder, the console script compresses the bundled demo
    and the API loads a zoo model from a folder that is not the repository."""
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True, timeout=600,
                   capture_output=True)
    wheel = next(wheels.glob("vitprune-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=600, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", "import vitprune, sys; print(vitprune.__file__); "
                            "m = vitprune.load_model('zoo:eva'); print(type(m).__name__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines()[0].startswith(str(target)) and where.stdout.splitlines()[1] == "Eva"
    assert (target / "vitprune" / "py.typed").is_file()
    done = subprocess.run([str(target / "bin" / "vitprune"), "compress", "--model", "demo", "--data", "demo", "--keep-topk", "5",
                           "--per-class", "2", "--eval-per-class", "5", "--latency-rounds", "0", "--out", "demo-out"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (work / "demo-out" / "model.pt2").is_file() and (work / "demo-out" / "README.md").is_file()


# ---------------------------------------------------------------------------------- export options
@pytest.mark.slow
def test_export_options_opset_provider_threads_and_fp16(compressed, tmp_path):
    import onnx
    import onnxruntime as ort

    from vitprune.export.onnx import metadata_value

    target = tmp_path / "m.onnx"
    assert main(["export", "--model", str(compressed), "--out", str(target), "--opset", "20", "--threads", "2", "--fp16"]) == 0
    proto = onnx.load(str(target))
    assert proto.opset_import[0].version == 20 or any(o.domain == "" and o.version == 20 for o in proto.opset_import)
    assert proto.producer_name == "vitprune" and proto.producer_version == vitprune.__version__
    props = {p.key: p.value for p in proto.metadata_props}
    assert all(json.loads(v) is not None or v == "null" for v in props.values())  # every value is JSON
    assert metadata_value(props, "precision") == "fp32" and isinstance(metadata_value(props, "source_model"), str)
    half = tmp_path / "m.fp16.onnx"
    sess = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float16)"
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        want = vitprune.load_model(str(compressed))(x).numpy()
    got = sess.run(None, {"pixel_values": x.numpy().astype(np.float16)})[0].astype(np.float32)
    assert np.abs(got - want).max() <= 5e-2


@pytest.mark.parametrize("argv,message", [
    (["--provider", "NoSuchExecutionProvider"], "--provider NoSuchExecutionProvider is not available in this onnxruntime"),
    (["--provider", "CUDAExecutionProvider"], "pip install onnxruntime-gpu"),
    (["--opset", "9"], "--opset must be one of 18..23"),
    (["--threads", "0"], "--threads must be a whole number >= 1"),
])
@pytest.mark.slow
def test_export_option_refusals(compressed, tmp_path, capsys, argv, message):
    from .helpers import last_line

    assert main(["export", "--model", str(compressed), "--out", str(tmp_path / "x.onnx"), *argv]) == 2
    assert message in last_line(capsys.readouterr().err)
    assert not (tmp_path / "x.onnx").exists()
