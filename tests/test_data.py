"""Data loaders and the on-device batches of common.py, on files the tests write."""
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import common


def write_image(path, size, colour, centre=None):
    """An RGB image of `colour`; optionally a centred square of side centre[0] in centre[1]."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8) + np.array(colour, np.uint8)
    if centre:
        side, inner = centre
        top, left = (h - side) // 2, (w - side) // 2
        pixels[top:top + side, left:left + side] = inner
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_folder_with_splits(tmp_path):
    for split, n in (("train", 5), ("test", 3)):
        for i in range(n):
            write_image(tmp_path / split / "cls" / f"{i}.png", (40, 48), (10 * i, 200, 30))
    train = common.load_images("folder", tmp_path, "train")
    test = common.load_images("folder", tmp_path, "test", image_size=16)
    assert train.shape == (5, 3, 32, 32) and train.dtype == torch.uint8
    assert test.shape == (3, 3, 16, 16)
    assert train[2, :, 10, 10].tolist() == [20, 200, 30]  # a flat colour survives resizing


def test_files_that_are_not_images_are_skipped_with_a_count(tmp_path):
    """A text file or a truncated JPEG named .jpg is left out, with one warning that counts
    the skipped files and names the first; a folder of nothing but such files is an error."""
    for i in range(4):
        write_image(tmp_path / "train" / f"{i}.png", (32, 32), (50 * i, 0, 0))
    (tmp_path / "train" / "1b.jpg").write_text("not an image")
    good = tmp_path / "train" / "2b.jpg"
    write_image(good, (32, 32), (0, 0, 0))
    good.write_bytes(good.read_bytes()[:40])  # truncated
    write_image(tmp_path / "test" / "0.png", (32, 32), (0, 0, 0))
    with pytest.warns(UserWarning, match=r"skipped 2 of 6 files .* \(the first: .*1b\.jpg\)"):
        train = common.load_images("folder", tmp_path, "train")
    assert train[:, 0, 0, 0].tolist() == [0, 50, 100, 150]  # 0, 1, 2, 3.png in order
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "bad" / "test").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / "train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / "train" / name).write_text("text")
    with pytest.raises(common.UserError, match=r"none of the 2 image files .*a\.jpg"):
        common.load_images("folder", tmp_path / "bad", "train")


def test_flat_folder_holds_out_every_tenth(tmp_path):
    for i in range(20):
        write_image(tmp_path / "a" / f"{i:02d}.png", (32, 32), (i, i, i))
    train = common.load_images("folder", tmp_path, "train")
    test = common.load_images("folder", tmp_path, "test")
    assert len(train) == 18 and len(test) == 2
    assert sorted(test[:, 0, 0, 0].tolist()) == [9, 19]


def test_folder_images_are_not_cropped_unless_asked(tmp_path):
    """A folder data set has no default crop: an image already of --image-size is read
    pixel for pixel (PNG, no resampling); --crop 16 at --image-size 16, its central 16 x 16."""
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for split in ("train", "test"):
        (tmp_path / split / "cls").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / split / "cls" / "0.png")
    loaded = common.load_images("folder", tmp_path, "train", image_size=32)
    assert np.array_equal(loaded[0].permute(1, 2, 0).numpy(), pixels)
    cropped = common.load_images("folder", tmp_path, "test", image_size=16, crop=16)
    assert np.array_equal(cropped[0].permute(1, 2, 0).numpy(), pixels[8:24, 8:24])


def test_a_runs_images_are_its_data_set_at_its_size_and_crop(tmp_path):
    """common.run_images (eval.py, --fit-lde, the held-out splits): the split of the run's
    --dataset at its --image-size after its --crop, from its --data-root or another."""
    pixels = np.random.default_rng(2).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    for root, image in ((tmp_path / "a", pixels[0]), (tmp_path / "b", pixels[1])):
        for split in ("train", "test"):
            (root / split / "cls").mkdir(parents=True)
            Image.fromarray(image if split == "train" else 255 - image).save(
                root / split / "cls" / "0.png")
    settings = {"dataset": "folder", "data_root": str(tmp_path / "a"), "image_size": 16,
                "crop": 24}
    for split, source in (("train", pixels[0]), ("test", 255 - pixels[0])):
        got = common.run_images(settings, split)
        assert torch.equal(got, common.load_images("folder", str(tmp_path / "a"), split, 16, 24))
        assert got.shape == (1, 3, 16, 16)
        uncropped = common.load_images("folder", str(tmp_path / "a"), split, 16, 0)
        assert not torch.equal(got, uncropped)  # the crop, then the size
    elsewhere = common.run_images(settings, "train", str(tmp_path / "b"))
    assert torch.equal(elsewhere, common.load_images("folder", str(tmp_path / "b"), "train", 16,
                                                     24))
    import dae

    as_args = dae.Args(dataset="folder", data_root=str(tmp_path / "a"), image_size=16, crop=24)
    assert torch.equal(common.run_images(as_args, "train"), common.run_images(settings, "train"))


def test_celeba_as_folder_split_and_crop(tmp_path):
    """The standard partition by file number: 1-162770 train, 162771-182637 valid (held
    out), 182638 on test; a file whose name is not a number counts as train. Each image is
    CelebA-shaped, 178x218, blue around a central 140x140 square whose green value tells
    the file apart."""
    names = ["000001", "000002", "162770", "162771", "182637", "182638", "202599", "extra"]
    for i, name in enumerate(names):
        write_image(tmp_path / "img_align_celeba" / f"{name}.jpg", (178, 218), (0, 0, 255),
                    centre=(140, (255, 25 * i, 0)))
    train = common.load_images("celeba", tmp_path, "train")  # crop 140 -> 64 by default
    test = common.load_images("celeba", tmp_path, "test")
    assert train.shape == (4, 3, 64, 64) and test.shape == (2, 3, 64, 64)
    green = lambda images: images[:, 1, 32, 32].tolist()  # noqa: E731
    assert green(train) == pytest.approx([0, 25, 50, 175], abs=8)  # 1, 2, 162770, extra
    assert green(test) == pytest.approx([125, 150], abs=8)  # 182638, 202599
    red, blue = train[:, 0].float().mean(), train[:, 2].float().mean()
    assert red > 240 and blue < 15  # only the central crop is left
    small = common.load_images("celeba", tmp_path, "test", image_size=32, crop=160)
    assert small.shape == (2, 3, 32, 32)
    assert small[:, 2].float().mean() > 20  # the 160 crop keeps some of the blue border


def test_celeba_default_crop_is_the_central_140_pixels(tmp_path):
    """Crop 0 means CelebA's central 140 x 140 pixels (the RAE setting, which dae, vae, eae
    and iae_lde share): at --image-size 140 the images are those pixels, not resampled."""
    pixels = np.random.default_rng(0).integers(0, 256, (218, 178, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "182638.jpg", quality=95)
    with Image.open(tmp_path / "182638.jpg") as image:
        decoded = np.asarray(image.convert("RGB"))
    centre = decoded[(218 - 140) // 2:(218 + 140) // 2, (178 - 140) // 2:(178 + 140) // 2]
    loaded = common.load_images("celeba", tmp_path, "test", image_size=140)
    assert loaded.shape == (1, 3, 140, 140)
    assert np.array_equal(loaded[0].permute(1, 2, 0).numpy(), centre)


def test_celeba_download_is_asked_for_and_read(tmp_path, monkeypatch):
    """With no images in the folder, torchvision's CelebA downloader is called (download
    True) and its img_align_celeba folder is then read."""
    import torchvision

    asked = []

    def downloader(root, split, download):
        asked.append((root, split, download))
        for name in ("000001", "200000"):
            write_image(tmp_path / "celeba" / "img_align_celeba" / f"{name}.jpg", (178, 218),
                        (0, 0, 255))

    monkeypatch.setattr(torchvision.datasets, "CelebA", downloader)
    assert common.load_images("celeba", tmp_path, "test").shape == (1, 3, 64, 64)
    assert asked == [(tmp_path, "all", True)]


def test_cache_is_used_and_refreshed(tmp_path, monkeypatch):
    for i in range(4):
        write_image(tmp_path / "x" / f"{i}.png", (32, 32), (i, 0, 0))
    first = common.load_images("folder", tmp_path, "train")
    assert len(list(tmp_path.glob(".cache-folder-train-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(Image, "open", no_decoding)
    assert torch.equal(common.load_images("folder", tmp_path, "train"), first)
    monkeypatch.undo()
    write_image(tmp_path / "x" / "9.png", (32, 32), (99, 0, 0))  # the data changed
    assert len(common.load_images("folder", tmp_path, "train")) == len(first) + 1


@pytest.mark.parametrize("old, new", [("0.png", "00.png"), ("3.png", "39.png")])
def test_cache_notices_a_first_or_last_file_replaced(old, new, tmp_path, monkeypatch):
    """The first or the last file replaced by another of a new name, but the same count and
    modification times: decoded again, not read from the cache. The cache is loaded with
    weights_only=True."""
    import os

    for i in range(4):
        write_image(tmp_path / "x" / f"{i}.png", (32, 32), (i, 0, 0))
    common.load_images("folder", tmp_path, "train")
    stamp = (tmp_path / "x" / old).stat().st_mtime
    (tmp_path / "x" / old).unlink()
    write_image(tmp_path / "x" / new, (32, 32), (77, 0, 0))
    os.utime(tmp_path / "x" / new, (stamp, stamp))
    load = torch.load
    loads = []

    def safe_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", safe_load)
    images = common.load_images("folder", tmp_path, "train")
    assert 77 in images[:, 0, 0, 0].tolist() and loads == [True]


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_fixed_size_data_sets_refuse_another_size(name, tmp_path):
    with pytest.raises(common.UserError, match="must be 32"):
        common.load_images(name, tmp_path, "train", image_size=64)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "digits"])
def test_a_crop_of_images_that_are_not_cropped_is_refused(name, tmp_path):
    """--crop acts on CelebA and image folders only; elsewhere it would be ignored."""
    with pytest.raises(common.UserError, match="--crop applies to celeba and folder images"):
        common.load_images(name, tmp_path, "train", crop=20)


def test_digits():
    train = common.load_images("digits", "", "train")
    test = common.load_images("digits", "", "test")
    assert train.shape == (1500, 1, 32, 32) and test.shape == (297, 1, 32, 32)
    assert train.dtype == torch.uint8 and train.max() == 255 and train.min() == 0
    # The last 297 of scikit-learn's 1797, 0..16 scaled to 0..255, upscaled 4x by bilinear
    # interpolation between pixel centres (scipy's grid mode; not corner-aligned).
    from scipy import ndimage
    from sklearn.datasets import load_digits

    raw = load_digits().images[1500:] / 16  # [297, 8, 8]
    upscaled = np.stack([ndimage.zoom(r, 4, order=1, grid_mode=True, mode="nearest") for r in raw])
    expected = np.round(np.clip(upscaled, 0, 1) * 255)
    np.testing.assert_array_equal(test[:, 0].numpy(), expected)


def test_the_tests_fake_data_set_is_deterministic_and_its_folder_the_same(fake_folder):
    """The tests' synthetic images (dataset "fake" in the test process), and the image
    folder the scripts they start read: the same images."""
    a = common.load_images("fake", "", "train")
    assert a.shape == (256, 3, 32, 32)
    assert torch.equal(a, common.load_images("fake", "", "train"))
    assert not torch.equal(a[:64], common.load_images("fake", "", "test"))
    assert common.load_images("fake", "", "test", image_size=64).shape == (64, 3, 64, 64)
    assert "fake" not in common.DATASETS
    for split in ("train", "test"):
        assert torch.equal(common.load_images("folder", str(fake_folder), split),
                           common.load_images("fake", "", split))


def write_idx(path, array: np.ndarray):
    """The MNIST file format (IDX): 0, 0, 8 (unsigned bytes), ndim, big-endian int32 sizes."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_is_zero_padded_to_32_pixels(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(0)
    digits = {part: g.integers(1, 256, (n, 28, 28)) for part, n in (("train", 5), ("t10k", 3))}
    for part, images in digits.items():
        write_idx(raw / f"{part}-images-idx3-ubyte", images)
        write_idx(raw / f"{part}-labels-idx1-ubyte", np.arange(len(images)) % 10)
    for split, part in (("train", "train"), ("test", "t10k")):
        images = common.load_images("mnist", tmp_path, split)
        assert images.shape == (len(digits[part]), 1, 32, 32) and images.dtype == torch.uint8
        np.testing.assert_array_equal(images[:, 0, 2:30, 2:30].numpy(), digits[part])
        border = images.clone()
        border[:, :, 2:30, 2:30] = 0
        assert not border.any()  # two rows and columns of zeros on every side


def test_cifar10_images_are_channels_first(tmp_path, monkeypatch):
    """CIFAR-10's batches store each image as 1024 red, then green, then blue bytes."""
    import pickle

    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    g = np.random.default_rng(0)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = g.integers(0, 256, (2, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": rows[name], "labels": [0, 1]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    cifar = torchvision.datasets.CIFAR10  # the checksums are those of the real files
    monkeypatch.setattr(cifar, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": None})
    train = common.load_images("cifar10", tmp_path, "train")
    expected = np.concatenate([rows[f"data_batch_{i}"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.numpy(), expected.reshape(10, 3, 32, 32))
    test = common.load_images("cifar10", tmp_path, "test")
    np.testing.assert_array_equal(test.numpy(), rows["test_batch"].reshape(2, 3, 32, 32))


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"),
                                          ("celeba", "celeba/img_align_celeba"),
                                          ("mnist", "MNIST/raw")])
def test_torchvision_sets_offline_give_clear_error(name, folder, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(common.UserError) as error:
        common.load_images(name, tmp_path, "train")
    message = str(error.value)
    assert "--data-root" in message and str(tmp_path / folder) in message
    assert "\n" not in message


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_folder(tmp_path, make):
    root = tmp_path / "data"
    if make == "empty":
        root.mkdir()
    with pytest.raises(common.UserError, match="data folder"):
        common.load_images("folder", root, "train")


def test_batches_cover_the_epoch_once_and_repeat_by_seed():
    values = torch.arange(12) * 23  # 0 ... 253
    images = values.to(torch.uint8).view(12, 1, 1, 1).expand(12, 1, 2, 2)
    epoch = list(common.batches(images, 4, seed=3, epoch=0))
    assert len(epoch) == 3 and all(b.shape == (4, 1, 2, 2) for b in epoch)
    seen = torch.cat(epoch)[:, 0, 0, 0].sort().values
    torch.testing.assert_close(seen, values.float() / 255)  # [0, 1], uint8 / 255
    again = torch.cat(list(common.batches(images, 4, seed=3, epoch=0)))
    other = torch.cat(list(common.batches(images, 4, seed=3, epoch=1)))
    assert torch.equal(torch.cat(epoch), again) and not torch.equal(again, other)
    for batch_size, full in [(5, 2), (13, 0), (12, 1), (11, 1), (6, 2)]:  # partial dropped
        sizes = [len(b) for b in common.batches(images, batch_size, seed=0, epoch=0)]
        assert sizes == [batch_size] * full, batch_size


def test_each_torchrun_process_draws_its_own_batch_order(monkeypatch):
    """Under torchrun every process slices its own shard with its own permutation: rank 1's
    order differs from rank 0's, and rank 0's is a one-process run's; the seed matters too."""
    images = torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1)

    def order(rank, seed=0):
        return torch.cat(list(common.batches(images, 10, seed=seed, epoch=2, rank=rank))).flatten()

    alone, first, second = torch.cat(list(common.batches(images, 10, 0, 2))).flatten(), \
        order(0), order(1)
    assert torch.equal(alone, first) and not torch.equal(first, second)
    assert torch.equal(second.sort().values, first.sort().values)  # both a whole shard
    assert not torch.equal(order(0, seed=1), first)
    monkeypatch.setattr(common, "world", lambda: (1, 2))  # what a process's Epoch passes
    steps = common.Epoch(Path("."), 0, 2, 20)  # a global batch of 20: 10 a process
    torch.testing.assert_close(torch.cat(list(steps.batches(images))).flatten(), second)


def test_batch_flip_mirrors_half_the_images():
    images = torch.randint(0, 256, (4000, 3, 4, 4), dtype=torch.uint8)
    plain = torch.cat(list(common.batches(images, 500, seed=1, epoch=0)))
    flipped = torch.cat(list(common.batches(images, 500, seed=1, epoch=0, flip=True)))
    same = (plain == flipped).flatten(1).all(1)
    mirrored = (plain.flip(3) == flipped).flatten(1).all(1)
    assert (same | mirrored).all()
    # Each image flipped with probability 1/2: 2000 +- 32 (binomial s.d.) of 4000.
    assert abs(mirrored.sum().item() - 2000) < 130
    assert 0.0 <= flipped.min() and flipped.max() <= 1.0
