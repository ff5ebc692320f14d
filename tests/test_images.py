"""Image data: bundled digits and MNIST on their grey-level grids, image folders written with Pillow,
arrays in every accepted layout, and the recorded train/test split."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.config import DataConfig
from difflab.data import (
    ImageDataset,
    apply_split,
    load_array,
    load_digits8,
    load_image_folder,
    load_images,
    load_mnist,
    train_test_split,
)


def grid(levels):
    """The float32 nearest to each exact level ``2 k / (levels - 1) - 1``."""
    return (np.arange(levels) / (levels - 1) * 2 - 1).astype(np.float32)


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)


# ----------------------------------------------------------------------------- bundled data


def test_digits_on_the_17_level_grid():
    from sklearn.datasets import load_digits

    ds = load_digits8()
    raw = load_digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == torch.float32
    assert ds.bins == 17 and len(ds) == 1797
    np.testing.assert_array_equal(np.unique(ds.x.numpy()), np.linspace(-1, 1, 17).astype(np.float32))
    np.testing.assert_array_equal(ds.x[:, 0].numpy(), (raw.images / 8.0 - 1.0).astype(np.float32))
    np.testing.assert_array_equal(ds.y.numpy(), raw.target)
    assert ds.y.dtype == torch.int64 and sorted(np.unique(ds.y.numpy())) == list(range(10))


def test_mnist_on_the_256_level_grid():
    ds = load_mnist()
    assert ds.x.shape == (5000, 1, 28, 28) and ds.bins == 256
    values = np.unique(ds.x.numpy())
    assert len(values) == 256
    np.testing.assert_array_equal(values, grid(256))
    assert values[0] == -1.0 and values[-1] == 1.0
    counts = np.bincount(ds.y.numpy(), minlength=10)
    assert len(counts) == 10 and counts.min() >= 400 and counts.max() <= 600
    # mean intensity of MNIST is about 0.13 on [0, 1]
    assert 0.10 < ((ds.x + 1) / 2).mean().item() < 0.16


# ----------------------------------------------------------------------------- folders


def test_folder_grayscale_rgb_and_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    g1 = rng.integers(0, 256, (6, 5))
    g2 = rng.integers(0, 256, (6, 5))
    c1 = rng.integers(0, 256, (6, 5, 3))
    save(tmp_path / "gray" / "b.png", g1)
    save(tmp_path / "gray" / "a.png", g2)
    (tmp_path / "gray" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path / "gray")
    assert ds.x.shape == (2, 1, 6, 5) and ds.bins == 256 and ds.classes == ()
    np.testing.assert_array_equal(ds.x[0, 0].numpy(), grid(256)[g2])  # sorted: a.png first
    np.testing.assert_array_equal(ds.x[1, 0].numpy(), grid(256)[g1])
    assert ds.y.tolist() == [0, 0]

    save(tmp_path / "classes" / "zebra" / "z.png", g1)
    save(tmp_path / "classes" / "ant" / "deep" / "x.jpg", c1)  # nested: class is the first level
    save(tmp_path / "classes" / "ant" / "y.png", c1)
    ds = load_image_folder(tmp_path / "classes")
    assert ds.classes == ("ant", "zebra") and ds.y.tolist() == [0, 0, 1]
    assert ds.x.shape == (3, 3, 6, 5)  # one colour image makes the set RGB
    np.testing.assert_array_equal(ds.x[1].numpy(), grid(256)[c1.transpose(2, 0, 1)])  # ant/y.png
    np.testing.assert_array_equal(ds.x[2].numpy(), np.repeat(grid(256)[g1][None], 3, 0))  # grey -> RGB

    gray = load_image_folder(tmp_path / "classes", channels=1)
    assert gray.x.shape == (3, 1, 6, 5)
    px = np.asarray(c1[0, 0], dtype=np.float64)  # ITU-R 601-2 luma, as Pillow's "L"
    luma = int(np.floor(px @ [0.299, 0.587, 0.114] + 0.5))
    assert abs(int(round((gray.x[1, 0, 0, 0].item() + 1) * 127.5)) - luma) <= 1


def test_folder_resize_and_centre_crop(tmp_path):
    # 60 x 20 (W x H): columns 0..9 black, 10..49 grey 128, 50..59 white
    wide = np.full((20, 60), 128)
    wide[:, :10], wide[:, 50:] = 0, 255
    save(tmp_path / "wide.png", wide)
    tall = wide.T.copy()  # 20 x 60, rows 10..49 grey
    save(tmp_path / "tall.png", tall)
    small = np.arange(9 * 12).reshape(9, 12) % 256  # 12 x 9: upscaled
    save(tmp_path / "small.png", small)
    ds = load_image_folder(tmp_path, image_size=10)
    assert ds.x.shape == (3, 1, 10, 10)
    # after scaling the short side to 10 the centre 10 x 10 square shows only the grey band
    level = grid(256)[128]
    names = sorted(p.name for p in tmp_path.iterdir())  # small, tall, wide
    for i in (names.index("tall.png"), names.index("wide.png")):
        np.testing.assert_allclose(ds.x[i].numpy(), level, atol=1.5 / 127.5)
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(tmp_path, image_size=-1)


def test_folder_sixteen_bit_is_scaled(tmp_path):
    a = np.array([[0, 128 * 257, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    ds = load_image_folder(tmp_path)
    np.testing.assert_array_equal(ds.x[0, 0, 0].numpy(), grid(256)[[0, 128, 255]])


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "text")
    save(tmp_path / "bad" / "good.png", np.zeros((4, 4)))
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path / "bad")
    save(tmp_path / "mixed" / "a.png", np.zeros((4, 4)))
    save(tmp_path / "mixed" / "b.png", np.zeros((6, 4)))
    with pytest.raises(ValueError, match=r"a\.png is 4x4.*b\.png is 4x6"):
        load_image_folder(tmp_path / "mixed")
    assert load_image_folder(tmp_path / "mixed", image_size=4).x.shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path / "mixed", channels=2)
    with pytest.raises(NotADirectoryError):
        load_image_folder(tmp_path / "mixed" / "a.png")


# ----------------------------------------------------------------------------- arrays


def test_arrays_in_every_layout(tmp_path):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (5, 3, 6, 6)).astype(np.uint8)  # NCHW
    expected = grid(256)[u8]
    np.save(tmp_path / "nchw.npy", u8)
    np.save(tmp_path / "nhwc.npy", u8.transpose(0, 2, 3, 1))
    np.save(tmp_path / "nhw.npy", u8[:, 0])
    np.save(tmp_path / "nhw1.npy", u8[:, :1].transpose(0, 2, 3, 1))
    np.save(tmp_path / "int64.npy", u8.astype(np.int64))
    for name in ("nchw", "nhwc", "int64"):
        ds = load_array(tmp_path / f"{name}.npy")
        assert ds.bins == 256
        np.testing.assert_array_equal(ds.x.numpy(), expected)
    for name in ("nhw", "nhw1"):
        np.testing.assert_array_equal(load_array(tmp_path / f"{name}.npy").x.numpy(), expected[:, :1])

    unit = rng.random((4, 5, 5)).astype(np.float32)
    np.save(tmp_path / "unit.npy", unit)
    ds = load_array(tmp_path / "unit.npy")
    assert ds.bins is None
    np.testing.assert_allclose(ds.x[:, 0].numpy(), unit * 2 - 1, atol=1e-6)
    signed = unit * 2 - 1
    np.save(tmp_path / "signed.npy", signed.astype(np.float64))
    np.testing.assert_allclose(load_array(tmp_path / "signed.npy").x[:, 0].numpy(), signed, atol=1e-7)

    tiny = rng.integers(0, 256, (2, 1, 3, 3)).astype(np.uint8)  # both axes 1 and 3 could be C
    np.save(tmp_path / "tiny_nchw.npy", tiny)
    np.save(tmp_path / "tiny_nhwc.npy", tiny.transpose(0, 2, 3, 1))  # [2, 3, 3, 1]
    for name in ("tiny_nchw", "tiny_nhwc"):  # the square reading wins
        np.testing.assert_array_equal(load_array(tmp_path / f"{name}.npy").x.numpy(), grid(256)[tiny])

    np.savez(tmp_path / "xy.npz", x=u8, y=np.arange(5))
    ds = load_array(tmp_path / "xy.npz")
    assert ds.y.tolist() == [0, 1, 2, 3, 4] and ds.y.dtype == torch.int64
    np.savez(tmp_path / "x.npz", x=u8)
    assert load_array(tmp_path / "x.npz").y.tolist() == [0] * 5


@pytest.mark.parametrize(
    "content, match",
    [
        (np.zeros((4, 4), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 4), np.uint8), "C = 1 or 3"),
        (np.zeros((2, 3, 3, 3), np.uint8), "ambiguous"),
        (np.full((2, 4, 4), 1.5, np.float32), r"\[0, 1\] or \[-1, 1\]"),
        (np.full((2, 4, 4), np.nan, np.float32), "NaN"),
        (np.full((2, 4, 4), 300, np.int32), "0..255"),
        (np.zeros((2, 4, 4), bool), "dtype bool"),
        (np.zeros((0, 4, 4), np.uint8), "no images"),
    ],
)
def test_array_errors(tmp_path, content, match):
    np.save(tmp_path / "a.npy", content)
    with pytest.raises(ValueError, match=match):
        load_array(tmp_path / "a.npy")


def test_array_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_array(tmp_path / "missing.npy")
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"key 'x'.*images"):
        load_array(tmp_path / "nox.npz")
    np.savez(tmp_path / "bady.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="labels"):
        load_array(tmp_path / "bady.npz")
    (tmp_path / "a.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=".npy or .npz"):
        load_array(tmp_path / "a.txt")


# ----------------------------------------------------------------------------- splits


def toy_dataset(n=50):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1) / n
    return ImageDataset(x, torch.arange(n) % 3, None, "toy")


def test_split_is_disjoint_complete_and_reproducible():
    ds = toy_dataset(50)
    train, test, idx = train_test_split(ds, 0.2, seed=3)
    assert len(test) == 10 and len(train) == 40
    ids_train = set((train.x.flatten() * 50).round().long().tolist())
    ids_test = set((test.x.flatten() * 50).round().long().tolist())
    assert ids_test == set(idx.tolist()) and not ids_train & ids_test
    assert ids_train | ids_test == set(range(50))
    _, _, again = train_test_split(ds, 0.2, seed=3)
    np.testing.assert_array_equal(idx, again)
    _, _, other = train_test_split(ds, 0.2, seed=4)
    assert set(other.tolist()) != set(idx.tolist())
    # the same indices as a fresh draw from the documented recipe
    np.testing.assert_array_equal(idx, np.sort(np.random.default_rng(3).permutation(50)[:10]))
    re_train, re_test = apply_split(ds, json.loads(json.dumps(idx.tolist())))
    assert torch.equal(re_train.x, train.x) and torch.equal(re_test.y, test.y)
    assert len(train_test_split(ds, 0.001, 0)[1]) == 1 and len(train_test_split(ds, 0.0, 0)[1]) == 0
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="test_fraction"):
            train_test_split(ds, bad, 0)
    with pytest.raises(ValueError, match="distinct"):
        apply_split(ds, [1, 1])


def test_load_images_dispatch(tmp_path):
    train, test, info = load_images(DataConfig(name="digits", test_fraction=0.1, seed=7))
    assert len(train) + len(test) == 1797 and len(test) == 180
    assert info["bins"] == 17 and info["shape"] == [1, 8, 8] and info["n_test"] == 180
    json.dumps(info)  # ready to be written to the run folder
    _, _, info2 = load_images(DataConfig(name="digits", test_fraction=0.1, seed=7))
    assert info2 == info

    save(tmp_path / "imgs" / "a" / "1.png", np.zeros((8, 8)))
    save(tmp_path / "imgs" / "b" / "2.png", np.full((8, 8), 255))
    train, test, info = load_images(
        DataConfig(name="folder", path=str(tmp_path / "imgs"), channels=3, test_fraction=0.5)
    )
    assert train.x.shape[1:] == (3, 8, 8) and info["classes"] == ["a", "b"] and len(test) == 1

    np.save(tmp_path / "g.npy", np.zeros((4, 8, 8), np.uint8))
    train, _, _ = load_images(DataConfig(name="array", path=str(tmp_path / "g.npy"), channels=3))
    assert train.x.shape[1:] == (3, 8, 8)
    with pytest.raises(ValueError, match="image_size=16"):
        load_images(DataConfig(name="digits", image_size=16))
    with pytest.raises(ValueError, match="data.path"):
        load_images(DataConfig(name="folder"))
    with pytest.raises(ValueError, match="moons.*digits, mnist, folder, array"):
        load_images(DataConfig(name="moons"))
