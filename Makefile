# The two commands of the README. Both set up what they need first (idempotent).
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

# Main job on the embedded default: the bundled demo ViT on Fashion-MNIST.
# Re-running it on the finished folder is a no-op that says the result is up to date (--force recomputes).
demo: setup
	.venv/bin/vitprune compress --model demo --data demo --keep-topk 5

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python -m pytest

bench: setup
	.venv/bin/python eval/bench_discovery.py
