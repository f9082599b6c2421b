"""Errors a user reads. Each one says what went wrong and names the fix.

All derive from :class:`MergebenchError`, which the CLI prints without a traceback and the
pytest plugin turns into a one-paragraph failure instead of a stack dump.
"""

from __future__ import annotations


class MergebenchError(Exception):
    """Base class: an error caused by input or environment, not by a bug in mergebench."""


class UsageError(MergebenchError):
    """Bad names, options or hyperparameters."""


class UnknownNameError(UsageError):
    """A method, task, model or recipe name that no installed plugin registered."""


class IncompatibleModelsError(MergebenchError):
    """Base and experts that cannot be merged (architecture, shapes, vocabulary)."""


class CheckpointError(MergebenchError):
    """A missing, truncated or corrupt checkpoint file."""


class HubUnavailableError(MergebenchError):
    """The Hugging Face Hub cannot be reached (or the repository is not there)."""


class DataUnavailableError(MergebenchError):
    """A dataset or data package that cannot be fetched or fails verification."""


class CacheFullError(MergebenchError):
    """The disk holding the artifact cache filled up while an artifact was being written."""


class PluginError(MergebenchError):
    """A plugin that registers badly: duplicate names, misspelt hooks, bad specs."""


class JudgeError(MergebenchError):
    """A judge model's endpoint that cannot be reached, refuses the request or keeps failing."""
