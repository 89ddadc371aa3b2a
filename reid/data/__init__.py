"""Datasets: readers that return (path, pid, camid) records, a P x K sampler, transforms, a torch Dataset."""

from reid.data.dataset import ImageDataset, verify_images
from reid.data.holdout import holdout_from_config, holdout_identities
from reid.data.lfw import FacePair, LFWPairs, read_lfw
from reid.data.readers import (
    DATASETS,
    build_dataset,
    parse_market_name,
    read_cuhk03_np,
    read_identity_folders,
    read_image_folder,
    read_market1501,
    split_by_identity,
)
from reid.data.records import UNKNOWN_CAMERA, ImageRecord, ReidDataset, relabel
from reid.data.sampler import PKSampler
from reid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "UNKNOWN_CAMERA",
    "FacePair",
    "ImageDataset",
    "ImageRecord",
    "LFWPairs",
    "PKSampler",
    "ReidDataset",
    "build_dataset",
    "build_transforms",
    "holdout_from_config",
    "holdout_identities",
    "parse_market_name",
    "read_cuhk03_np",
    "read_identity_folders",
    "read_image_folder",
    "read_lfw",
    "read_market1501",
    "relabel",
    "split_by_identity",
    "verify_images",
]
