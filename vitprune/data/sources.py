"""Data specs -> two pools of images that never share one: ``calibration`` and ``evaluation``.

``calibration`` feeds path discovery, statistics and least squares; ``evaluation`` measures
accuracy. A spec's pools are ``FilePool``s over Hugging Face ``datasets`` with columns ``image``
(``Image``), ``label`` (``ClassLabel``) and ``id`` (a stable string), or, for Fashion-MNIST's raw pixels,
``ArrayPool``s; the Python API also takes a pair of torch Datasets (``DataPools.from_datasets``).

Specs:
  ``demo`` / ``fashion-mnist[:DIR]``  Fashion-MNIST idx files (train -> calibration, test -> evaluation)
  ``imagefolder:DIR``                 class sub-folders (ImageNet-val layout, torchvision order);
                                      ``DIR/train`` + ``DIR/val`` if present, else a per-class split
  ``hf:NAME`` / ``hf:DIR``            a Hugging Face dataset: a Hub id, a ``save_to_disk`` folder or a folder of
                                      data files (train -> calibration, validation or test -> evaluation;
                                      ``hf:NAME?split=S&eval_split=E&image_column=I&label_column=L``, the
                                      command line's --split / --eval-split / --image-column / --label-column)
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .images import IMAGE_EXTENSIONS
from .pools import ArrayPool, FilePool, ImagePool, TensorPool

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEFAULT_CALIB_FRACTION = 0.8


@dataclass(frozen=True)
class DataPools:
    """The two disjoint pools of one data spec (or of a pair of torch Datasets)."""

    spec: str
    calibration: ImagePool
    evaluation: ImagePool
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def restricted(self, classes: tuple[int, ...]) -> "DataPools":
        """The pools of some classes only, labels renumbered 0..k-1 in the order given (``--specialize``)."""
        from .pools import ClassSubsetPool, _classes

        for c in classes:
            _classes([c], self.num_classes)  # one line for a class out of range
        return DataPools(f"{self.spec}#classes={','.join(map(str, classes))}", ClassSubsetPool(self.calibration, classes),
                         ClassSubsetPool(self.evaluation, classes), tuple(self.class_names[c] for c in classes))

    @classmethod
    def from_datasets(cls, calibration, evaluation, class_names: tuple[str, ...]) -> "DataPools":
        """Pools over two torch Datasets yielding ``(image_tensor, int_label)``, already preprocessed for the model."""
        if calibration is evaluation:
            raise UserError("the calibration and evaluation datasets are the same object; pass two disjoint datasets "
                            "(vitprune never measures accuracy on the images it calibrated on)")
        for name, dataset in (("calibration", calibration), ("evaluation", evaluation)):
            if len(dataset) == 0:
                raise UserError(f"the {name} dataset is empty; pass a dataset with images of every class")
        return cls(f"datasets:{type(calibration).__name__}+{type(evaluation).__name__}", TensorPool(calibration, "calibration"),
                   TensorPool(evaluation, "evaluation"), tuple(class_names))


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
    """The train split (calibration) and the test split (evaluation), held as the idx files' pixels: no image files."""
    (train_x, train_y), (test_x, test_y) = (fashion_mnist_arrays(root, split) for split in ("train", "test"))
    return DataPools(spec, ArrayPool(train_x, train_y, "train"), ArrayPool(test_x, test_y, "test"), FASHION_MNIST_CLASSES)


# ------------------------------------------------------------------------------- image folders
def scan_image_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """Classes (sorted sub-folder names, as torchvision ImageFolder) and their files in sorted order."""
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist; pass imagefolder:DIR with one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"image folder {root} has no class sub-folders; put each class's images in DIR/<class>/")
    real = root.resolve()
    for name in classes:
        target = (root / name).resolve()
        if target == real or target in real.parents or real in target.parents and target.parent != real:
            raise UserError(f"class folder {root / name} leads to {target}, which holds (or lies elsewhere in) the dataset "
                            "itself; each class folder must hold that class's images only")
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
    seen: dict[Path, Path] = {}
    for path in paths:
        first = seen.setdefault(path.resolve(), path)
        if first != path:
            raise UserError(f"{path} and {first} are the same image file (through a link): one image cannot be two images "
                            "(or have two classes); keep one")
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
        shared = {p.resolve() for p in scans[0][1]} & {p.resolve() for p in scans[1][1]}
        if shared:
            raise UserError(f"{split_dirs[0]} and {split_dirs[1]} share image files (e.g. {sorted(shared)[0]}, through a link); "
                            "calibration and evaluation images must be different files")
        calib, evaluation = (_folder_dataset(d, *s, root) for d, s in zip(split_dirs, scans))
        return DataPools(spec, FilePool(calib), FilePool(evaluation), tuple(scans[0][0]))
    classes, paths, labels = scan_image_folder(root)
    labels_np = np.asarray(labels)
    calib_idx, eval_idx = [], []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels_np == c)
        n_calib = int(np.floor(len(idx) * calib_fraction))
        calib_idx += idx[:n_calib].tolist()
        eval_idx += idx[n_calib:].tolist()
    full = _folder_dataset(root, classes, paths, labels, root)
    return DataPools(spec, FilePool(full.select(calib_idx)), FilePool(full.select(eval_idx)), tuple(classes))


# ---------------------------------------------------------------------------------------- hub
HF_OPTIONS = ("split", "eval_split", "image_column", "label_column")


def hf_spec(spec: str, **options: str | None) -> str:
    """``hf:NAME`` with the options of ``--split``, ``--eval-split``, ``--image-column``, ``--label-column`` written into
    it (``hf:NAME?split=train&label_column=y``): the spec alone then names the data, in records and checkpoints too."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(HF_OPTIONS))
    if unknown:
        raise TypeError(f"unknown hf: option(s) {unknown}")
    if not given:
        return spec
    kind, _, arg = str(spec).partition(":")
    if kind != "hf" or not arg:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{flags} apply to hf: data only (got --data {spec}); pass --data hf:NAME or hf:DIR")
    name, _, query = arg.partition("?")
    merged = {**_query(query, spec), **given}
    return f"hf:{name}?" + "&".join(f"{k}={merged[k]}" for k in HF_OPTIONS if k in merged)


def _query(query: str, spec: str) -> dict[str, str]:
    out = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or key not in HF_OPTIONS or not value:
            raise UserError(f"'{part}' in --data {spec} is not one of {', '.join(k + '=VALUE' for k in HF_OPTIONS)}")
        out[key] = value
    return out


def _load_hub(name: str):
    """A DatasetDict: a folder written by ``save_to_disk``, a folder of data files (parquet, csv, images ...), or a Hub
    dataset id (offline, the last is one line naming the folder that works)."""
    import datasets

    folder = Path(name).expanduser()
    if folder.is_dir():
        if (folder / "dataset_dict.json").is_file() or (folder / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
        try:
            return datasets.load_dataset(str(folder))
        except Exception as exc:
            raise UserError(f"cannot read {folder} as a Hugging Face dataset ({str(exc).splitlines()[0][:200]}); pass a folder "
                            "written by Dataset.save_to_disk or holding parquet / csv / image files") from exc
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    fix = (f"download it once where there is a network (datasets.load_dataset('{name}').save_to_disk('DIR')) and pass "
           "--data hf:DIR")
    try:
        return datasets.load_dataset(name)
    except (ConnectionError, OSError) as exc:
        raise UserError(f"cannot load '{name}' from the Hugging Face Hub ({'offline' if offline else type(exc).__name__}); "
                        f"{fix}") from exc
    except Exception as exc:  # datasets raises many types for unknown names, and offline for uncached ones
        text = str(exc).splitlines()[0][:200]
        if offline or "offline" in text.lower() or "connect" in text.lower():
            raise UserError(f"cannot load '{name}' from the Hugging Face Hub (offline: {text}); {fix}") from exc
        raise UserError(f"cannot load Hugging Face dataset '{name}': {text}") from exc


def _hub_pools(spec: str, arg: str) -> DataPools:
    """Two splits of a Hugging Face dataset: calibration from ``split`` (train), evaluation from ``eval_split``
    (validation, else test); an Image column and a label column (a ``ClassLabel``, whose names name the classes, or
    integers 0..N-1, named by their values)."""
    import datasets

    name, _, query = arg.partition("?")
    options = _query(query, spec)
    dsd = _load_hub(name)
    splits = list(dsd)
    calib_split = options.get("split", "train")
    eval_split = options.get("eval_split") or next((s for s in ("validation", "test") if s in dsd and s != calib_split), None)
    for flag, split in (("--split", calib_split), ("--eval-split", eval_split)):
        if split is None or split not in dsd:
            what = "calibration" if flag == "--split" else "evaluation"
            missing = f"split '{split}'" if split is not None else "'validation' or 'test' split"
            raise UserError(f"Hugging Face dataset '{name}' has no {missing} for {what} (splits: {', '.join(splits)}); pass {flag} SPLIT")
    if calib_split == eval_split:
        raise UserError(f"--split and --eval-split are both '{calib_split}': calibration and evaluation images must differ; "
                        "pass two splits")
    first = dsd[calib_split]
    image_col = options.get("image_column") or next((k for k, f in first.features.items() if isinstance(f, datasets.Image)), None)
    label_col = options.get("label_column") or next((k for k, f in first.features.items() if isinstance(f, datasets.ClassLabel)),
                                                     next((k for k in ("label", "labels") if k in first.features), None))
    columns = ", ".join(first.features)
    if image_col is None or image_col not in first.features:
        raise UserError(f"Hugging Face dataset '{name}' has no image column{f' {image_col!r}' if image_col else ''} (columns: "
                        f"{columns}); pass --image-column NAME")
    if label_col is None or label_col not in first.features:
        raise UserError(f"Hugging Face dataset '{name}' has no label column{f' {label_col!r}' if label_col else ''} (columns: "
                        f"{columns}); pass --label-column NAME")
    feature = first.features[label_col]
    if isinstance(feature, datasets.ClassLabel):
        names = tuple(feature.names)
    elif isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        values = [int(v) for split in (calib_split, eval_split) for v in dsd[split].unique(label_col)]
        if min(values) < 0:
            raise UserError(f"the label column '{label_col}' of '{name}' has negative values; labels are class ids 0..N-1")
        names = tuple(str(v) for v in range(max(values) + 1))  # no names in the data: the classes are named by their ids
    else:
        raise UserError(f"the label column '{label_col}' of '{name}' is {feature}, not class ids; pass --label-column with a "
                        "ClassLabel or integer column")
    pools = []
    for split in (calib_split, eval_split):
        ds = dsd[split]
        if not isinstance(ds.features.get(image_col), datasets.Image):
            ds = ds.cast_column(image_col, datasets.Image())  # file paths or encoded bytes
        ds = ds.select_columns([image_col, label_col]).rename_columns(
            {old: new for old, new in ((image_col, "image"), (label_col, "label")) if old != new})
        pools.append(ds.add_column("id", [f"{split}/{i}" for i in range(len(ds))]))
    return DataPools(spec, FilePool(pools[0]), FilePool(pools[1]), names)


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


def absolute_spec(spec: str) -> str:
    """The spec with its folder made absolute (what a checkpoint records, so it reads the same data from anywhere)."""
    kind, _, arg = str(spec).partition(":")
    location = data_location(spec)
    if arg and location is not None:
        return f"{kind}:{location.resolve()}"
    return str(spec)


def data_location(spec: str) -> Path | None:
    """The folder a data spec reads from (what an output must never overlap); None for hub datasets."""
    kind, _, arg = str(spec).partition(":")
    if kind in ("demo", "fashion-mnist"):
        return Path(arg or FASHION_MNIST_DIR).expanduser()
    if kind == "imagefolder" and arg:
        return Path(arg).expanduser()
    return None


__all__ = ["data_location", "absolute_spec", "DataPools", "load_data", "fashion_mnist_arrays", "read_idx", "scan_image_folder", "cache_dir", "FASHION_MNIST_DIR",
           "FASHION_MNIST_CLASSES"]
