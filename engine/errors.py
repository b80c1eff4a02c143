"""Errors the engine raises for bad input. Each message is one line a user can act on."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: a problem with the user's input or environment, shown without a traceback."""


class ConfigError(EngineError):
    """A preset, --set override or config value is invalid; the message names the key."""


class DataError(EngineError):
    """A data file is missing, empty or malformed; the message names the file and line."""


class ModelError(EngineError):
    """A model folder or repo id cannot be loaded; the message names the path."""


class RunDirError(EngineError):
    """A run directory cannot be written or read (resume, monitor)."""


class NonFiniteError(EngineError):
    """The loss or gradients became NaN or inf."""


class Cancelled(Exception):
    """Raised inside the training thread when the user cancels; not an error."""
