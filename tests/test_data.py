"""Data specs: folder order as torchvision, disjoint pools, deterministic selection, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitprune.data import load_data, model_transform, read_idx, select_per_class
from vitprune.errors import UserError

from .helpers import tiny_vit

CLASSES = ["Zebra", "apple", "class10", "class2", "dog_cat"]


def _make_folder(root, per_class=5, classes=CLASSES):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 12, 3), 10 * c + i, dtype=np.uint8)).save(root / name / f"img_{i:02d}.png")
    return root


def test_imagefolder_order_matches_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    root = _make_folder(tmp_path / "data")
    tv = ImageFolder(str(root))
    pools = load_data(f"imagefolder:{root}")
    assert list(pools.class_names) == tv.classes
    ids = pools.calibration.ids() + pools.evaluation.ids()
    tv_ids = [str(__import__("pathlib").Path(p).relative_to(root)) for p, _ in tv.samples]
    assert sorted(ids) == sorted(tv_ids)
    # calibration = first 80% of every class in torchvision order, evaluation = the rest: disjoint
    assert set(pools.calibration.ids()).isdisjoint(pools.evaluation.ids())
    assert pools.calibration.ids() == [s for s in tv_ids if int(s[-6:-4]) < 4]


def test_train_val_subfolders_become_the_pools(tmp_path):
    _make_folder(tmp_path / "d" / "train", per_class=2)
    _make_folder(tmp_path / "d" / "val", per_class=1)
    pools = load_data(f"imagefolder:{tmp_path / 'd'}")
    assert len(pools.calibration) == 10 and len(pools.evaluation) == 5
    assert all(i.startswith("train/") for i in pools.calibration.ids())


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (lambda r: (r / "apple" / "notes.txt").write_text("hi"), "is not an image file"),
        (lambda r: (r / "empty").mkdir(), "has no images"),
    ],
)
def test_folder_problems_are_user_errors(tmp_path, damage, fragment):
    root = _make_folder(tmp_path / "data")
    damage(root)
    with pytest.raises(UserError, match=fragment):
        load_data(f"imagefolder:{root}")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_unreadable_image_is_a_user_error(tmp_path, monkeypatch, workers):
    monkeypatch.setenv("VITPRUNE_DECODE_WORKERS", workers)  # in this process, and in decoding workers
    root = _make_folder(tmp_path / "data")
    (root / "apple" / "img_02.png").write_bytes(b"not a png")
    pools = load_data(f"imagefolder:{root}")
    model = tiny_vit(img_size=12, patch_size=4, num_classes=5)
    with pytest.raises(UserError, match=r"^unreadable image 'apple/img_02.png' \(\w+\); remove or replace the file$"):
        list(pools.calibration.batches(model_transform(model), 4))


def test_decoding_workers_give_the_same_batches_in_order(tmp_path, monkeypatch):
    pools = load_data(f"imagefolder:{_make_folder(tmp_path / 'data', per_class=9)}")
    transform = model_transform(tiny_vit(img_size=12, patch_size=4, num_classes=5))

    class Shard:
        world, rank = 2, 1

    runs = {}
    for workers in ("0", "2"):
        monkeypatch.setenv("VITPRUNE_DECODE_WORKERS", workers)
        runs[workers] = [list(pools.calibration.batches(transform, 4, shard=shard)) for shard in (None, Shard)]
    for a, b in zip(*runs.values()):
        assert len(a) == len(b) > 1
        for (ids_a, x_a, y_a), (ids_b, x_b, y_b) in zip(a, b):
            assert ids_a == ids_b and torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
    assert [ids for ids, _, _ in runs["0"][1]] == [ids for ids, _, _ in runs["0"][0]][1::2]


def test_a_pool_of_pixels_selects_and_identifies_by_content():
    from vitprune.data import ArrayPool

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 6, 6), dtype=np.uint8), np.arange(12) % 3
    pool = ArrayPool(images, labels, "train")
    part = pool.select([5, 1, 7]).select([2, 0])
    assert part.ids() == ["train/7", "train/5"] and part.labels().tolist() == [1, 2]
    x = torch.cat([b[1] for b in part.batches(lambda im: torch.as_tensor(np.array(im)).float(), 1)])
    assert torch.equal(x, torch.as_tensor(images[[7, 5]]).float())
    changed = images.copy()
    changed[7, 0, 0] ^= 1
    assert ArrayPool(changed, labels, "train").select([7, 5]).digest() != part.digest()
    assert ArrayPool(images.copy(), labels, "train").select([7, 5]).digest() == part.digest()
    loader = part.torch_loader(lambda im: torch.as_tensor(np.array(im)).float(), 2)
    xs, ys = next(iter(loader))
    assert torch.equal(xs, x) and ys.tolist() == [1, 2]


def test_select_per_class_is_deterministic(tmp_path):
    pools = load_data(f"imagefolder:{_make_folder(tmp_path / 'data')}")
    a = select_per_class(pools.calibration, 2, (3, 1), num_classes=5)
    b = select_per_class(pools.calibration, 2, (1, 3), num_classes=5)
    assert a.ids() == b.ids() == ["apple/img_00.png", "apple/img_01.png", "class2/img_00.png", "class2/img_01.png"]
    with pytest.raises(UserError, match="out of range"):
        select_per_class(pools.calibration, 2, (7,), num_classes=5)
    with pytest.raises(UserError, match="--per-class"):
        select_per_class(pools.calibration, 0, None, num_classes=5)
    one_class = pools.calibration.select(range(4))  # only class 0 left in this pool
    with pytest.raises(UserError, match="class 1 has no images"):
        select_per_class(one_class, 1, None, num_classes=5)


def test_fashion_mnist_pools_are_train_and_test(fashion_dir):
    pools = load_data("demo")
    assert (len(pools.calibration), len(pools.evaluation)) == (60000, 10000)
    assert pools.class_names[9] == "Ankle boot"
    assert pools.calibration.ids()[0] == "train/0" and pools.evaluation.ids()[0] == "test/0"
    model = tiny_vit(img_size=28, patch_size=7, in_chans=1, num_classes=10)
    ids, images, labels = next(select_per_class(pools.evaluation, 1, None, num_classes=10).batches(model_transform(model), 4))
    assert images.shape == (4, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3]


def test_idx_reader_errors(tmp_path):
    (tmp_path / "x-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "x-idx1-ubyte")
    assert read_idx(_write_idx(tmp_path / "ok", np.arange(6, dtype=np.uint8).reshape(2, 3))).shape == (2, 3)


def _write_idx(path, arr):
    import struct

    path.write_bytes(struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes())
    return path


@pytest.mark.parametrize("spec,fragment", [("nope:x", "unknown data spec"), ("imagefolder:/no/such/dir", "does not exist"),
                                            ("fashion-mnist:/no/such/dir", "does not exist")])
def test_bad_data_specs(spec, fragment):
    with pytest.raises(UserError, match=fragment):
        load_data(spec)


def test_hub_dataset_offline_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Hugging Face"):
        load_data("hf:someone/some-dataset-that-is-not-cached")


def test_model_transform_follows_the_model_data_config():
    model = tiny_vit(img_size=28, patch_size=7, in_chans=1, num_classes=10)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5,), "std": (0.25,), "crop_pct": 1.0}
    out = model_transform(model)(Image.fromarray(np.full((28, 28), 255, dtype=np.uint8)))
    assert out.shape == (1, 28, 28) and torch.allclose(out, torch.full_like(out, 2.0))


def test_holdout_selection_is_disjoint_from_calibration(fashion_dir):
    from vitprune.data import load_data, select_holdout_per_class, select_per_class
    from vitprune.errors import UserError

    pools = load_data("demo")
    calib = select_per_class(pools.calibration, 16, num_classes=10)
    held = select_holdout_per_class(pools.calibration, 5, num_classes=10, skip=16)
    assert len(held) == 50 and not set(calib.ids()) & set(held.ids())
    assert sorted(set(held.labels().tolist())) == list(range(10))
    with pytest.raises(UserError, match="too few"):
        select_holdout_per_class(pools.calibration, 6000, num_classes=10, skip=16)
