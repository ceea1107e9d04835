"""Export: parity-checked ONNX (metadata written in one place), onnxruntime latency, gated int8 quantization, a
torch-only program (``torch.export``) and the Hugging Face Hub layout of a result folder (config.json, model card)."""
from __future__ import annotations

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
PROGRAM_FILE = "model.pt2"
HUB_CONFIG_FILE = "config.json"
MODEL_CARD_FILE = "README.md"
