"""Image pools: the images of one split, selected per class and served as preprocessed batches.

Three kinds behave alike: ``FilePool`` over a Hugging Face ``datasets.Dataset`` with columns ``image``,
``label`` and ``id`` (decoded and preprocessed for the model at batch time), ``ArrayPool`` over uint8 image arrays
in memory (a dataset of raw pixels, such as Fashion-MNIST's idx files: made into images at batch time), and
``TensorPool`` over a torch ``Dataset`` that yields ``(image_tensor, int_label)`` already preprocessed for the model
(what the Python API accepts from a user). Every batch is ``(ids, images, labels)``; ids are stable strings.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .images import open_image

Batch = tuple[list[str], torch.Tensor, torch.Tensor]


class ImagePool:
    """The contract of a pool (see the module docstring)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        """Labels as int64 numpy, in pool order (no image is decoded where the source allows)."""
        raise NotImplementedError

    def ids(self) -> list[str]:
        raise NotImplementedError

    def select(self, indices: Sequence[int]) -> "ImagePool":
        raise NotImplementedError

    def batches(self, transform: Callable | None, batch_size: int, *, shard=None) -> Iterator[Batch]:
        """(ids, images, labels) batches in pool order; ``shard`` (a ``distributed.Dist``) keeps batch k only
        on rank k % world, before decoding. ``transform`` turns a decoded image into the model's tensor."""
        raise NotImplementedError

    def verify(self) -> None:
        """Fail with one line naming the image if a file of the pool cannot be opened (cheap; no decoding)."""

    def digest(self) -> str:
        """A digest of the pool's images, labels and ids, in order: what results made from them are identified by (a
        changed file behind the same spec gives another digest)."""
        raise NotImplementedError


class FilePool(ImagePool):
    """A Hugging Face ``datasets.Dataset`` with ``image`` / ``label`` / ``id`` columns."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset.with_format("numpy")["label"][:], dtype=np.int64)

    def ids(self) -> list[str]:
        return list(self.dataset["id"])

    def select(self, indices: Sequence[int]) -> "FilePool":
        return FilePool(self.dataset.select(list(indices)))

    def _raw(self):
        import datasets

        return self.dataset.cast_column("image", datasets.Image(decode=False))

    def batches(self, transform: Callable | None, batch_size: int, *, shard=None) -> Iterator[Batch]:
        """Batches decoded in ``decode_workers()`` DataLoader worker processes (in order) while the model runs on the
        previous one, or in this process for a pool of one batch."""
        if transform is None:
            raise ValueError("images read from files need the model's transform")
        starts = [start for k, start in enumerate(range(0, len(self), batch_size))
                  if shard is None or k % shard.world == shard.rank]
        decoded = _DecodedBatches(self._raw(), starts, batch_size, transform)
        workers = decode_workers(len(self)) if len(starts) > 1 and _can_send(decoded) else 0
        if not workers:
            yield from (decoded.unwrap(decoded[i]) for i in range(len(starts)))
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(decoded, batch_size=None, num_workers=workers, collate_fn=_as_is, prefetch_factor=2)
        yield from (decoded.unwrap(batch) for batch in loader)

    def verify(self) -> None:
        raw = self._raw()
        for ident, img in zip(raw["id"], raw["image"]):
            if img.get("bytes") is None and img.get("path"):
                open_image(ident, img["path"], verify_only=True).close()

    def digest(self) -> str:
        """The dataset's fingerprint (``datasets`` derives it from the content of data it holds, and from the indices
        of a selection) and, for images kept as file paths, each file's path, size and modification time."""
        import hashlib
        import os

        h = hashlib.sha256(f"file-pool:{getattr(self.dataset, '_fingerprint', '')}:{len(self)}".encode())
        if len(self):
            raw = self._raw()
            if raw[0]["image"].get("bytes") is None:
                for img in raw["image"]:
                    path = img.get("path") or ""
                    try:
                        st = os.stat(path)
                        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns};".encode())
                    except OSError:
                        h.update(f"{path}:missing;".encode())
        return h.hexdigest()

    def torch_loader(self, transform: Callable, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        """A torch DataLoader of (images, labels), for training loops (accelerate-ready)."""
        from torch.utils.data import DataLoader

        def apply(batch: dict) -> dict:
            return {"pixel_values": [transform(img) for img in batch["image"]], "label": batch["label"]}

        def collate(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.stack([r["pixel_values"] for r in rows]), torch.as_tensor([r["label"] for r in rows])

        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self.dataset.with_transform(apply), batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                          generator=gen)


DECODE_WORKERS_ENV = "VITPRUNE_DECODE_WORKERS"


DECODE_WORKERS_MIN_IMAGES = 1024  # below this, starting worker processes costs more than decoding here


def decode_workers(images: int | None = None) -> int:
    """Worker processes that decode image files: ``VITPRUNE_DECODE_WORKERS`` if set, else none for fewer than
    DECODE_WORKERS_MIN_IMAGES ``images``, else one per core beyond the first, at most 4 (the model's forward keeps the
    others); 0 decodes in this process, as does a daemonic process."""
    import multiprocessing
    import os

    if multiprocessing.current_process().daemon:  # a daemonic process may not start workers
        return 0
    value = os.environ.get(DECODE_WORKERS_ENV)
    if value is not None:
        try:
            return max(0, int(value))
        except ValueError:
            raise UserError(f"{DECODE_WORKERS_ENV}={value!r} is not a whole number; set it to 0 (decode in the main "
                            "process) or a worker count") from None
    if images is not None and images < DECODE_WORKERS_MIN_IMAGES:
        return 0
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def _can_send(dataset) -> bool:
    """Whether worker processes can receive ``dataset``: always when they are forked, else if it pickles (a user's
    transform may be a closure)."""
    import multiprocessing
    import pickle

    if multiprocessing.get_start_method(allow_none=False) == "fork":
        return True
    try:
        pickle.dumps(dataset)
        return True
    except Exception:
        return False


def _as_is(batch):
    return batch


class _DecodedBatches(Dataset):
    """Batch ``i`` of a file pool, decoded and preprocessed: what a DataLoader worker makes. An unreadable image comes
    back as its one-line message (a worker's exception would reach the user as a traceback), raised by ``unwrap``."""

    def __init__(self, raw, starts: list[int], batch_size: int, transform: Callable) -> None:
        self.raw, self.starts, self.batch_size, self.transform = raw, starts, batch_size, transform

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        rows = self.raw[self.starts[i] : self.starts[i] + self.batch_size]
        try:
            tensors = [self.transform(open_image(ident, img["bytes"] if img.get("bytes") is not None else img["path"]))
                       for ident, img in zip(rows["id"], rows["image"])]
        except UserError as exc:
            return str(exc)
        return list(rows["id"]), torch.stack(tensors), torch.as_tensor(rows["label"], dtype=torch.long)

    @staticmethod
    def unwrap(batch) -> Batch:
        if isinstance(batch, str):
            raise UserError(batch)
        return batch


class TensorPool(ImagePool):
    """A torch ``Dataset`` of ``(image_tensor, int_label)`` pairs, already preprocessed for the model."""

    def __init__(self, dataset, name: str, indices: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.name = name
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _all_labels(self) -> np.ndarray:
        if self._labels is None:
            tensors = getattr(self.dataset, "tensors", None)
            targets = getattr(self.dataset, "targets", None)
            if tensors is not None and len(tensors) >= 2:
                labels = tensors[1]
            elif targets is not None:
                labels = targets
            else:
                labels = [self._item(i)[1] for i in range(len(self.dataset))]
            try:
                values = torch.as_tensor(labels).cpu()
            except (TypeError, ValueError, RuntimeError) as exc:
                raise UserError(f"the {self.name} dataset's labels are not integers ({type(exc).__name__}); "
                                "yield (image_tensor, int_label) pairs") from exc
            if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
                raise UserError(f"the {self.name} dataset's labels are {values.dtype}, not whole class ids; yield "
                                "(image_tensor, int_label) pairs")
            self._labels = np.asarray(values, dtype=np.int64).reshape(-1)
        return self._labels

    def _item(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2 or not isinstance(item[0], torch.Tensor):
            raise UserError(f"the {self.name} dataset must yield (image_tensor, int_label) pairs, already preprocessed "
                            f"for the model (item {i} is {type(item).__name__})")
        image, label = item[0], item[1]
        if isinstance(label, torch.Tensor):
            if label.numel() != 1 or label.is_floating_point() or label.is_complex():
                raise UserError(f"the {self.name} dataset's item {i} has label {label.tolist()!r}; labels are whole class ids "
                                "(int, or an integer tensor of one element)")
            label = int(label.item())
        elif isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise UserError(f"the {self.name} dataset's item {i} has label {label!r} ({type(label).__name__}); labels are whole "
                            "class ids (int)")
        if image.is_floating_point() and not bool(torch.isfinite(image).all()):
            raise UserError(f"the {self.name} dataset's item {i} has non-finite pixels (NaN or inf); fix its preprocessing")
        return image, int(label)

    def labels(self) -> np.ndarray:
        return self._all_labels()[self.indices]

    def digest(self) -> str:
        """Every selected item's bytes and label, in order (the tensors are in memory: nothing else identifies them)."""
        import hashlib

        h = hashlib.sha256(f"tensor-pool:{self.name}:{len(self)}".encode())
        for i in self.indices:
            x, y = self._item(i)
            t = x.detach().cpu().contiguous()
            h.update(f"{i}:{y}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def ids(self) -> list[str]:
        return [f"{self.name}/{i}" for i in self.indices]

    def select(self, indices: Sequence[int]) -> "TensorPool":
        pool = TensorPool(self.dataset, self.name, [self.indices[i] for i in indices])
        pool._labels = self._labels
        return pool

    def batches(self, transform: Callable | None, batch_size: int, *, shard=None) -> Iterator[Batch]:
        for k, start in enumerate(range(0, len(self.indices), batch_size)):
            if shard is not None and k % shard.world != shard.rank:
                continue
            chunk = self.indices[start : start + batch_size]
            items = [self._item(i) for i in chunk]
            yield ([f"{self.name}/{i}" for i in chunk], torch.stack([x for x, _ in items]).float(),
                   torch.as_tensor([y for _, y in items], dtype=torch.long))

    def torch_loader(self, transform: Callable, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        from torch.utils.data import DataLoader, Subset

        gen = torch.Generator().manual_seed(seed)
        return DataLoader(Subset(self.dataset, self.indices), batch_size=batch_size, shuffle=shuffle, generator=gen,
                          collate_fn=lambda rows: (torch.stack([r[0] for r in rows]).float(),
                                                   torch.as_tensor([int(r[1]) for r in rows])))


class ArrayPool(ImagePool):
    """Images held in memory as one uint8 array, ``(N, H, W)`` or ``(N, H, W, C)``, with int labels (a dataset read
    from idx files): nothing is encoded to image files and decoded back; an image becomes a PIL image only when its
    batch is made, then goes through the model's transform like a decoded file."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str, indices: Sequence[int] | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(f"ArrayPool needs uint8 (N, H, W[, C]) images and N labels, not {images.dtype} {images.shape} "
                             f"and {len(labels)} labels")
        self.images = images
        self._labels = np.asarray(labels, dtype=np.int64)
        self.name = name
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
        self._digest: str | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        return self._labels[self.indices]

    def ids(self) -> list[str]:
        return [f"{self.name}/{i}" for i in self.indices.tolist()]

    def select(self, indices: Sequence[int]) -> "ArrayPool":
        return ArrayPool(self.images, self._labels, self.name, self.indices[np.asarray(indices, dtype=np.int64)])

    def image(self, i: int):
        """Pool image ``i`` as a PIL image (mode L or RGB, as a decoded file would be)."""
        from PIL import Image

        return Image.fromarray(self.images[self.indices[i]])

    def batches(self, transform: Callable | None, batch_size: int, *, shard=None) -> Iterator[Batch]:
        if transform is None:
            raise ValueError("images held as arrays need the model's transform")
        for k, start in enumerate(range(0, len(self), batch_size)):
            if shard is not None and k % shard.world != shard.rank:
                continue
            chunk = range(start, min(start + batch_size, len(self)))
            yield ([f"{self.name}/{self.indices[i]}" for i in chunk], torch.stack([transform(self.image(i)) for i in chunk]),
                   torch.as_tensor(self._labels[self.indices[start:start + batch_size]], dtype=torch.long))

    def digest(self) -> str:
        """The selected images' pixels and labels and their positions, in order (computed once)."""
        if self._digest is None:
            import hashlib

            h = hashlib.sha256(f"array-pool:{self.name}:{self.images.shape[1:]}:{len(self)}".encode())
            h.update(self.indices.tobytes())
            h.update(np.ascontiguousarray(self.labels()).tobytes())
            h.update(np.ascontiguousarray(self.images[self.indices]).tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def torch_loader(self, transform: Callable, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        """A torch DataLoader of (images, labels), for training loops (accelerate-ready)."""
        from torch.utils.data import DataLoader

        pool = self

        class Items(Dataset):
            def __len__(self) -> int:
                return len(pool)

            def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
                return transform(pool.image(i)), int(pool._labels[pool.indices[i]])

        gen = torch.Generator().manual_seed(seed)
        return DataLoader(Items(), batch_size=batch_size, shuffle=shuffle, generator=gen,
                          collate_fn=lambda rows: (torch.stack([r[0] for r in rows]), torch.as_tensor([r[1] for r in rows])))


class ClassSubsetPool(ImagePool):
    """The images of some classes of a pool, their labels renumbered 0..k-1 in the order of ``classes``
    (class-specialised models: ``--specialize``)."""

    def __init__(self, pool: ImagePool, classes: Sequence[int], indices: Sequence[int] | None = None) -> None:
        self.pool = pool
        self.classes = tuple(int(c) for c in classes)
        self._map = {c: i for i, c in enumerate(self.classes)}
        if indices is None:
            labels = pool.labels()
            indices = np.flatnonzero(np.isin(labels, self.classes)).tolist()
        self.indices = list(indices)
        self._inner = pool.select(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def _remap(self, labels) -> np.ndarray:
        return np.asarray([self._map[int(y)] for y in labels], dtype=np.int64)

    def labels(self) -> np.ndarray:
        return self._remap(self._inner.labels())

    def ids(self) -> list[str]:
        return self._inner.ids()

    def select(self, indices: Sequence[int]) -> "ClassSubsetPool":
        return ClassSubsetPool(self.pool, self.classes, [self.indices[i] for i in indices])

    def batches(self, transform: Callable | None, batch_size: int, *, shard=None) -> Iterator[Batch]:
        for ids, images, labels in self._inner.batches(transform, batch_size, shard=shard):
            yield ids, images, torch.as_tensor(self._remap(labels.tolist()), dtype=torch.long)

    def verify(self) -> None:
        self._inner.verify()

    def digest(self) -> str:
        import hashlib

        return hashlib.sha256(f"classes {self.classes}:{self._inner.digest()}".encode()).hexdigest()

    def torch_loader(self, transform: Callable, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        from torch.utils.data import DataLoader

        loader = self._inner.torch_loader(transform, batch_size, shuffle=shuffle, seed=seed)
        remap = self._remap

        class Remapped:
            def __len__(self) -> int:
                return len(loader)

            def __iter__(self):
                for images, labels in loader:
                    yield images, torch.as_tensor(remap(labels.tolist()), dtype=torch.long)

        return Remapped()


# ---------------------------------------------------------------------------------- selection
def select_per_class(pool: ImagePool, per_class: int | None = None, classes: Sequence[int] | None = None, *,
                     num_classes: int) -> ImagePool:
    """The first ``per_class`` images of each class (pool order), classes in ascending order.

    Deterministic: the same arguments always give the same images in the same order.
    """
    if per_class is not None and per_class <= 0:
        raise UserError(f"--per-class must be >= 1 (got {per_class})")
    labels = pool.labels()
    wanted = _classes(classes, num_classes)
    indices: list[int] = []
    for c in wanted:
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            raise UserError(f"class {c} has no images in this pool; drop it from --classes or add images")
        indices += idx[:per_class].tolist() if per_class is not None else idx.tolist()
    return pool.select(indices)


def select_holdout_per_class(pool: ImagePool, per_class: int, classes: Sequence[int] | None = None, *, num_classes: int,
                             skip: int | None) -> ImagePool:
    """The last ``per_class`` images of each class of a pool, never one of its first ``skip`` (the
    calibration images): a held-out set from the calibration pool, for choosing settings without
    touching the evaluation pool."""
    if per_class <= 0:
        raise UserError(f"--selection-per-class must be >= 1 (got {per_class})")
    labels = pool.labels()
    indices: list[int] = []
    for c in _classes(classes, num_classes):
        idx = np.flatnonzero(labels == c)
        if skip is None or len(idx) < skip + per_class:
            raise UserError(f"class {c} has {len(idx)} calibration-pool images, too few for {skip or 'all'} calibration plus "
                            f"{per_class} held-out selection images; lower --selection-per-class or --per-class")
        indices += idx[-per_class:].tolist()
    return pool.select(indices)


def split_holdout(pool: ImagePool, holdout: int, per_class: int | None = None, classes: Sequence[int] | None = None, *,
                  num_classes: int, reserve: int = 0) -> tuple[ImagePool, ImagePool]:
    """(training, held-out) images of each class of a pool: the last ``reserve`` of a class are used by neither (an
    evaluate sweep's selection images, which must stay unseen), the ``holdout`` before them are held out, and the
    training images are the first ``per_class`` of the others (all of them when None); no two share an image."""
    labels = pool.labels()
    train, held = [], []
    for c in _classes(classes, num_classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[:max(len(idx) - reserve, 0)]
        if len(idx) <= holdout:
            raise UserError(f"class {c} has {len(idx)} images left, too few to hold out {holdout} of them for choosing the best "
                            "recovery epoch; lower --finetune-selection-per-class" + (" or --selection-per-class" if reserve else ""))
        held += idx[len(idx) - holdout:].tolist()
        rest = idx[:len(idx) - holdout]
        train += rest[:per_class].tolist() if per_class is not None else rest.tolist()
    return pool.select(train), pool.select(held)


def _classes(classes: Sequence[int] | None, num_classes: int) -> list[int]:
    wanted = sorted(set(classes)) if classes is not None else list(range(num_classes))
    for c in wanted:
        if not 0 <= c < num_classes:
            raise UserError(f"class {c} is out of range: the data has classes 0..{num_classes - 1}")
    return wanted


# ------------------------------------------------------------------------------ materialising
def materialize(pool: ImagePool, transform: Callable | None, batch_size: int = 256, *, shard=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess a whole pool (or this process's ``shard`` of its batches) once into tensors."""
    images, labels = [], []
    for _, x, y in pool.batches(transform, batch_size, shard=shard):
        images.append(x)
        labels.append(y)
    if not images:  # a process whose shard is empty
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(images), torch.cat(labels)


def tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shard=None) -> Iterator[Batch]:
    """(ids, images, labels) batches over preprocessed tensors, the same shape as ``ImagePool.batches``."""
    for k, s in enumerate(range(0, len(images), batch_size)):
        if shard is not None and k % shard.world != shard.rank:
            continue
        yield [str(i) for i in range(s, min(s + batch_size, len(images)))], images[s : s + batch_size], labels[s : s + batch_size]


__all__ = ["ImagePool", "FilePool", "TensorPool", "ClassSubsetPool", "Batch", "select_per_class", "select_holdout_per_class", "split_holdout",
           "materialize",
           "tensor_batches"]
