"""Data specs -> Hugging Face ``datasets`` pools, per-class selection and model preprocessing.

Every source becomes two pools that never share an image: ``calibration`` (path discovery,
statistics) and ``evaluation`` (accuracy). Each pool is a ``datasets.Dataset`` with columns
``image`` (``Image``), ``label`` (``ClassLabel``) and ``id`` (a stable string).

Specs:
  ``demo`` / ``fashion-mnist[:DIR]``  Fashion-MNIST idx files (train -> calibration, test -> evaluation)
  ``imagefolder:DIR``                 class sub-folders (ImageNet-val layout, torchvision order);
                                      ``DIR/train`` + ``DIR/val`` if present, else a per-class split
  ``hf:NAME``                         a Hugging Face Hub dataset (train -> calibration,
                                      validation or test -> evaluation)
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import UserError

if TYPE_CHECKING:
    import datasets

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DEFAULT_CALIB_FRACTION = 0.8


@dataclass(frozen=True)
class DataPools:
    """The two disjoint pools of one data spec."""

    spec: str
    calibration: datasets.Dataset
    evaluation: datasets.Dataset
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def cache_dir() -> Path:
    return Path(os.environ.get("VITPRUNE_CACHE", Path.home() / ".cache" / "vitprune"))


# ---------------------------------------------------------------------------------- idx files
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzipped) as a uint8 array, e.g. (N, 28, 28) or (N,)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        magic = struct.unpack(">I", data[:4])[0]
    except (OSError, EOFError, struct.error) as exc:
        raise UserError(f"cannot read idx file {path}: {exc}; reinstall the data (apt-get install -y dataset-fashion-mnist)") from exc
    ndim, dtype_code = magic & 0xFF, (magic >> 8) & 0xFF
    if dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise UserError(f"{path} is not a uint8 idx file (magic {magic:#x})")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {array.size}")
    return array.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise UserError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}; "
        "install it with 'apt-get install -y dataset-fashion-mnist' or pass fashion-mnist:DIR"
    )


def _require_fashion_dir(root: Path) -> None:
    if not root.is_dir():
        raise UserError(
            f"Fashion-MNIST folder {root} does not exist; "
            "install it with 'apt-get install -y dataset-fashion-mnist' or pass fashion-mnist:DIR"
        )


def fashion_mnist_arrays(root: str | os.PathLike = FASHION_MNIST_DIR, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Raw (images uint8 (N,28,28), labels int64 (N,)) of one split ('train' or 'test')."""
    root = Path(root)
    _require_fashion_dir(root)
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"Fashion-MNIST files in {root} do not match: {images.shape} images, {labels.shape} labels")
    return images, labels


def _fashion_mnist_pools(spec: str, root: Path) -> DataPools:
    import datasets

    _require_fashion_dir(root)
    features = datasets.Features(
        image=datasets.Image(),
        label=datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
        id=datasets.Value("string"),
    )
    files = [_find_idx(root, f"{p}-{k}-idx{n}-ubyte") for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1))]
    digest = hashlib.sha256("".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()[:16]
    pools = {}
    for split in ("train", "test"):
        target = cache_dir() / "datasets" / f"fashion-mnist-{digest}" / split
        if (target / "dataset_info.json").is_file():
            pools[split] = datasets.load_from_disk(str(target))
            continue
        images, labels = fashion_mnist_arrays(root, split)
        datasets.disable_progress_bars()
        ds = datasets.Dataset.from_dict(
            {"image": list(images), "label": labels.tolist(), "id": [f"{split}/{i}" for i in range(len(labels))]},
            features=features,
        )
        tmp = target.with_name(f"{split}.tmp-{os.getpid()}")
        ds.save_to_disk(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; use its copy
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        datasets.enable_progress_bars()
        pools[split] = datasets.load_from_disk(str(target))
    return DataPools(spec, pools["train"], pools["test"], FASHION_MNIST_CLASSES)


# ------------------------------------------------------------------------------- image folders
def scan_image_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """Classes (sorted sub-folder names, as torchvision ImageFolder) and their files in sorted order."""
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist; pass imagefolder:DIR with one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"image folder {root} has no class sub-folders; put each class's images in DIR/<class>/")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.rglob("*")  # hidden files and folders (.DS_Store, .ipynb_checkpoints/) are skipped
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        for path in files:
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UserError(f"{path} is not an image file ({', '.join(IMAGE_EXTENSIONS)}); remove it from the class folder")
        if not files:
            raise UserError(f"class folder {root / name} has no images; add images or remove the folder")
        paths += files
        labels += [label] * len(files)
    return classes, paths, labels


def _folder_dataset(root: Path, classes: list[str], paths: list[Path], labels: list[int], base: Path):
    import datasets

    features = datasets.Features(
        image=datasets.Image(), label=datasets.ClassLabel(names=classes), id=datasets.Value("string")
    )
    return datasets.Dataset.from_dict(
        {"image": [str(p) for p in paths], "label": labels, "id": [str(p.relative_to(base)) for p in paths]},
        features=features,
    )


def _imagefolder_pools(spec: str, root: Path, calib_fraction: float) -> DataPools:
    root = root.expanduser()
    split_dirs = [root / "train", next((root / n for n in ("val", "validation", "test") if (root / n).is_dir()), None)]
    if split_dirs[0].is_dir() and split_dirs[1] is not None:
        scans = [scan_image_folder(d) for d in split_dirs]
        if scans[0][0] != scans[1][0]:
            raise UserError(f"{split_dirs[0]} and {split_dirs[1]} have different class folders; make them match")
        calib, evaluation = (_folder_dataset(d, *s, root) for d, s in zip(split_dirs, scans))
        return DataPools(spec, calib, evaluation, tuple(scans[0][0]))
    classes, paths, labels = scan_image_folder(root)
    labels_np = np.asarray(labels)
    calib_idx, eval_idx = [], []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels_np == c)
        n_calib = int(np.floor(len(idx) * calib_fraction))
        calib_idx += idx[:n_calib].tolist()
        eval_idx += idx[n_calib:].tolist()
    full = _folder_dataset(root, classes, paths, labels, root)
    return DataPools(spec, full.select(calib_idx), full.select(eval_idx), tuple(classes))


# ---------------------------------------------------------------------------------------- hub
def _hub_pools(spec: str, name: str) -> DataPools:
    import datasets

    try:
        dsd = datasets.load_dataset(name)
    except (ConnectionError, OSError) as exc:
        raise UserError(
            f"cannot load '{name}' from the Hugging Face Hub ({type(exc).__name__}); "
            "check the network or download it and pass imagefolder:DIR"
        ) from exc
    except Exception as exc:  # datasets raises many types for unknown names
        raise UserError(f"cannot load Hugging Face dataset '{name}': {str(exc).splitlines()[0]}") from exc
    if "train" not in dsd:
        raise UserError(f"Hugging Face dataset '{name}' has no 'train' split for calibration (splits: {list(dsd)})")
    eval_split = next((s for s in ("validation", "test") if s in dsd), None)
    if eval_split is None:
        raise UserError(f"Hugging Face dataset '{name}' has no 'validation' or 'test' split (splits: {list(dsd)})")
    pools = []
    for split in ("train", eval_split):
        ds = dsd[split]
        image_col = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
        label_col = next((k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
        if image_col is None or label_col is None:
            raise UserError(f"Hugging Face dataset '{name}' needs an Image column and a ClassLabel column")
        ds = ds.select_columns([image_col, label_col]).rename_columns({image_col: "image", label_col: "label"})
        ds = ds.add_column("id", [f"{split}/{i}" for i in range(len(ds))])
        pools.append(ds)
    return DataPools(spec, pools[0], pools[1], tuple(pools[0].features["label"].names))


def load_data(spec: str, *, calib_fraction: float = DEFAULT_CALIB_FRACTION) -> DataPools:
    """Resolve a data spec to its calibration and evaluation pools (see module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind in ("demo", "fashion-mnist"):
        return _fashion_mnist_pools(spec, Path(arg or FASHION_MNIST_DIR).expanduser())
    if kind == "imagefolder" and arg:
        return _imagefolder_pools(spec, Path(arg), calib_fraction)
    if kind == "hf" and arg:
        return _hub_pools(spec, arg)
    raise UserError(f"unknown data spec '{spec}'; use demo, fashion-mnist[:DIR], imagefolder:DIR or hf:NAME")


# ---------------------------------------------------------------------------------- selection
def pool_labels(ds) -> np.ndarray:
    """Labels of a pool as numpy (respects select(); fast, no image decoding)."""
    return np.asarray(ds.with_format("numpy")["label"][:], dtype=np.int64)


def select_per_class(ds, per_class: int | None = None, classes: Sequence[int] | None = None, *, num_classes: int):
    """The first ``per_class`` images of each class (pool order), classes in ascending order.

    Deterministic: the same arguments always give the same images in the same order.
    """
    if per_class is not None and per_class <= 0:
        raise UserError(f"--per-class must be >= 1 (got {per_class})")
    labels = pool_labels(ds)
    wanted = sorted(set(classes)) if classes is not None else list(range(num_classes))
    for c in wanted:
        if not 0 <= c < num_classes:
            raise UserError(f"class {c} is out of range: the data has classes 0..{num_classes - 1}")
    indices: list[int] = []
    for c in wanted:
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            raise UserError(f"class {c} has no images in this pool; drop it from --classes or add images")
        indices += idx[:per_class].tolist() if per_class is not None else idx.tolist()
    return ds.select(indices)


def select_holdout_per_class(ds, per_class: int, classes: Sequence[int] | None = None, *, num_classes: int, skip: int | None):
    """The last ``per_class`` images of each class of a pool, never one of its first ``skip`` (the
    calibration images): a held-out set from the calibration pool, for choosing settings without
    touching the evaluation pool."""
    if per_class <= 0:
        raise UserError(f"--selection-per-class must be >= 1 (got {per_class})")
    labels = pool_labels(ds)
    wanted = sorted(set(classes)) if classes is not None else list(range(num_classes))
    indices: list[int] = []
    for c in wanted:
        idx = np.flatnonzero(labels == c)
        if skip is None or len(idx) < skip + per_class:
            raise UserError(f"class {c} has {len(idx)} calibration-pool images, too few for {skip or 'all'} calibration plus "
                            f"{per_class} held-out selection images; lower --selection-per-class or --per-class")
        indices += idx[-per_class:].tolist()
    return ds.select(indices)


# ------------------------------------------------------------------------------ preprocessing
def model_transform(model: torch.nn.Module) -> Callable:
    """The model's eval preprocessing from its timm data config (PIL image -> tensor)."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    chans = model.patch_embed.proj.in_channels
    cfg["input_size"] = (chans, *model.patch_embed.img_size)
    for key in ("mean", "std"):  # a single-channel model with RGB statistics: use their average
        if len(cfg[key]) != chans and chans == 1:
            cfg[key] = (float(np.mean(cfg[key])),)
    transform = timm.data.create_transform(**cfg, is_training=False)
    mode = "L" if cfg["input_size"][0] == 1 else "RGB"

    def apply(image) -> torch.Tensor:
        return transform(to_8bit(image).convert(mode))

    return apply


def to_8bit(image):
    """16-bit (and 32-bit integer) images scaled to 8 bits: PIL's own conversion would clip them to white."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    return image


def open_image(ident: str, source, *, verify_only: bool = False):
    """A fully decoded PIL image from a path or bytes; an unreadable, truncated, non-image or oversized
    (decompression bomb) file is one UserError naming the image. ``verify_only``: the cheap header and
    structure check of PIL's ``verify`` instead of decoding."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        pil = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if verify_only:
            pil.verify()
        else:
            pil.load()
        return pil
    except Image.DecompressionBombError as exc:
        raise UserError(f"image '{ident}' is too large to decode safely ({exc}); resize it or remove it") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"unreadable image '{ident}' ({type(exc).__name__}); remove or replace the file") from exc


def iterate_batches(ds, transform: Callable, batch_size: int, *, shard=None) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
    """Yield (ids, images, labels) batches in pool order; unreadable images raise UserError.

    ``shard`` (a ``distributed.Dist``) keeps batch k only on rank k % world, before decoding.
    """
    import datasets

    raw = ds.cast_column("image", datasets.Image(decode=False))
    for k, start in enumerate(range(0, len(raw), batch_size)):
        if shard is not None and k % shard.world != shard.rank:
            continue
        rows = raw[start : start + batch_size]
        tensors = [transform(open_image(ident, img["bytes"] if img.get("bytes") is not None else img["path"]))
                   for ident, img in zip(rows["id"], rows["image"])]
        yield list(rows["id"]), torch.stack(tensors), torch.as_tensor(rows["label"], dtype=torch.long)


def torch_loader(ds, transform: Callable, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """A torch DataLoader of (images, labels) over a pool, for training loops (accelerate-ready)."""
    from torch.utils.data import DataLoader

    def apply(batch: dict) -> dict:
        return {"pixel_values": [transform(img) for img in batch["image"]], "label": batch["label"]}

    def collate(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([r["pixel_values"] for r in rows]), torch.as_tensor([r["label"] for r in rows])

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds.with_transform(apply), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=gen)


def materialize(ds, transform: Callable, batch_size: int = 256, *, shard=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess a whole pool (or this process's ``shard`` of its batches) once into tensors."""
    images, labels = [], []
    for _, x, y in iterate_batches(ds, transform, batch_size, shard=shard):
        images.append(x)
        labels.append(y)
    if not images:  # a process whose shard is empty
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(images), torch.cat(labels)


def tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shard=None) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
    """(ids, images, labels) batches over preprocessed tensors, the same shape as ``iterate_batches``."""
    for k, s in enumerate(range(0, len(images), batch_size)):
        if shard is not None and k % shard.world != shard.rank:
            continue
        yield [str(i) for i in range(s, min(s + batch_size, len(images)))], images[s : s + batch_size], labels[s : s + batch_size]
