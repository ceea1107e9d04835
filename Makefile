# The two commands of the README. Both set up what they need first (idempotent).
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

# Main job on the embedded default: the bundled demo ViT on Fashion-MNIST.
demo: setup
	.venv/bin/vitprune discover --model demo --data demo --per-class 8 --topk 5 --out runs/demo --resume

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python -m pytest

bench: setup
	.venv/bin/python eval/bench_discovery.py
