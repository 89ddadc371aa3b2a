"""Errors a user can cause. Each says what went wrong and where (file, field, id).

Command-line entry points catch :class:`ReidError` and print its message instead of a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ReidError(Exception):
    """Base class of every error caused by user input (data, config, checkpoint, arguments)."""


class DatasetError(ReidError):
    """A dataset folder is missing, empty, or holds names that cannot be parsed."""


class ImageReadError(ReidError):
    """An image file cannot be read or decoded."""


class ConfigError(ReidError):
    """A config file or a config value is invalid (the message names the key)."""


class CheckpointError(ReidError):
    """A checkpoint or weight file is missing, corrupt or does not fit the model."""


class ModelMismatchError(ReidError):
    """Embeddings of one model (or dimension) were mixed with those of another."""


class TrainingDivergedError(ReidError):
    """A training loss became NaN or infinite (the message names the epoch, the step and each loss term)."""


class LossInputError(ReidError):
    """Embeddings, labels or mined indices given to a loss or miner do not fit together."""
