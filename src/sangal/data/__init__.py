"""Datasets: Market-1501, DukeMTMC-reID, MSMT17, CUHK03-NP, CSV/folder and the synthetic folder (drawn by
:mod:`sangal.synthetic`), their attribute labels, transforms and P×K sampling. Reads image folders and Lin et al.
.mat files from disk; hands ImageRecords, attribute tables and loaders to every layer above."""

from sangal.data.attributes import (
    IGNORE_INDEX,
    Attribute,
    AttributeSchema,
    AttributeTable,
    get_schema,
    read_attribute_mat,
)
from sangal.data.dataset import ImageDataset, check_images, read_image
from sangal.data.records import ImageRecord, ReIDDataset
from sangal.data.registry import load_dataset
from sangal.data.samplers import IdentitySampler
from sangal.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Attribute",
    "AttributeSchema",
    "AttributeTable",
    "IdentitySampler",
    "ImageDataset",
    "ImageRecord",
    "ReIDDataset",
    "build_transforms",
    "check_images",
    "get_schema",
    "load_dataset",
    "read_attribute_mat",
    "read_image",
]
