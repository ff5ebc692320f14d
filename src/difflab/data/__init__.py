"""Datasets that need no download: 2-D toy distributions and images."""

from .images import (
    IMAGE_DATASETS,
    ImageDataset,
    apply_split,
    load_array,
    load_digits8,
    load_image_folder,
    load_images,
    load_mnist,
    train_test_split,
)
from .toy2d import TOY2D, make_toy2d, make_toy2d_with_labels, toy2d_normalization

__all__ = [
    "IMAGE_DATASETS",
    "TOY2D",
    "ImageDataset",
    "apply_split",
    "load_array",
    "load_digits8",
    "load_image_folder",
    "load_images",
    "load_mnist",
    "make_toy2d",
    "make_toy2d_with_labels",
    "toy2d_normalization",
    "train_test_split",
]
