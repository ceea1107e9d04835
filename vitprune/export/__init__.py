"""Export: parity-checked ONNX (metadata written in one place), onnxruntime latency, and gated int8 quantization."""
from __future__ import annotations

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
