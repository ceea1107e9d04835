"""Data: specs -> two disjoint pools (calibration, evaluation), per-class selection, preprocessed batches."""
from __future__ import annotations

from .images import IMAGE_EXTENSIONS, model_transform, open_image, to_8bit
from .pools import (ArrayPool, FilePool, ImagePool, TensorPool, materialize, select_holdout_per_class, select_per_class, split_holdout,
                    tensor_batches)
from .sources import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, DataPools, absolute_spec, cache_dir, data_location, fashion_mnist_arrays,
                      load_data, read_idx, scan_image_folder)

__all__ = ["DataPools", "load_data", "data_location", "absolute_spec", "ImagePool", "ArrayPool", "FilePool", "TensorPool", "select_per_class", "select_holdout_per_class", "split_holdout",
           "materialize", "tensor_batches", "model_transform", "open_image", "to_8bit", "fashion_mnist_arrays", "read_idx",
           "scan_image_folder", "cache_dir", "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "IMAGE_EXTENSIONS"]
