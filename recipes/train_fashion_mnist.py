"""Train a bundled model (the demo, or a zoo model) on the Fashion-MNIST train split.

    .venv/bin/python recipes/train_fashion_mnist.py [--recipe recipes/demo.yaml] [--epochs N] [--out DIR]

Reads the recipe, trains on the 60k train images only, measures top-1 on the 10k test images
after every epoch, and writes model.safetensors (weights + the recipe as metadata) and
train_log.json into the recipe's ``out`` folder (``--model demo`` / ``--model zoo:NAME``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from tqdm import tqdm

from vitprune.data import fashion_mnist_arrays

HERE = Path(__file__).resolve().parent


def to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - mean) / std).unsqueeze(1)


def augment(x: torch.Tensor, pad: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 1, h, w + 2 * pad)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    x = x.gather(3, cols)
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
    return x


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(HERE / "demo.yaml"))
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch count")
    parser.add_argument("--out", default=None, help="output folder (default: the recipe's 'out', relative to the repository)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = yaml.safe_load(Path(args.recipe).read_text())
    hp = recipe["train"]
    epochs = args.epochs or hp["epochs"]
    torch.manual_seed(hp["seed"])
    gen = torch.Generator().manual_seed(hp["seed"])
    mean, std = recipe["data_config"]["mean"][0], recipe["data_config"]["std"][0]

    train_x, train_y = fashion_mnist_arrays(split="train")
    test_x, test_y = fashion_mnist_arrays(split="test")
    xs, ys = to_tensor(train_x, mean, std), torch.from_numpy(train_y)
    xt, yt = to_tensor(test_x, mean, std), torch.from_numpy(test_y)

    model = timm.create_model(recipe["arch"], pretrained=False, **recipe["model_kwargs"])
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "cls_token" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"]
    )
    steps_per_epoch = math.ceil(len(xs) / hp["batch_size"])
    total, warmup = epochs * steps_per_epoch, hp["warmup_epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
    )
    log = {"recipe": recipe, "epochs": epochs, "history": []}
    start = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xs), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="batch")
        for step in bar:
            idx = perm[step * hp["batch_size"] : (step + 1) * hp["batch_size"]]
            x = augment(xs[idx], hp["random_crop_padding"], hp["hflip"], gen)
            loss = F.cross_entropy(model(x), ys[idx], label_smoothing=hp["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = accuracy(model, xt, yt)
        log["history"].append({"epoch": epoch + 1, "test_top1": acc, "elapsed_s": round(time.time() - start, 1)})
        print(f"epoch {epoch + 1}: test top-1 {acc:.4f}", flush=True)

    log["test_top1"] = log["history"][-1]["test_top1"]
    log["train_seconds"] = round(time.time() - start, 1)
    log["torch"] = torch.__version__
    log["timm"] = timm.__version__
    out = Path(args.out) if args.out else HERE.parent / recipe["out"]
    out.mkdir(parents=True, exist_ok=True)
    meta = {"arch": recipe["arch"], "model_kwargs": recipe["model_kwargs"], "data_config": recipe["data_config"],
            "test_top1": log["test_top1"], "source": f"recipes/train_fashion_mnist.py --recipe recipes/{Path(args.recipe).name}"}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"vitprune": json.dumps(meta)})
    tmp.replace(out / "model.safetensors")
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"test top-1 {log['test_top1']:.4f}; wrote {out / 'model.safetensors'}")


if __name__ == "__main__":
    main()
