"""Exception types raised by clrl for bad input."""

from __future__ import annotations


class ClrlError(Exception):
    """Base class of every error clrl raises on purpose."""


class StreamError(ClrlError, ValueError):
    """A task stream is malformed: bad keys or types, unknown env id or attribute, mismatched spaces."""


class ConfigError(ClrlError, ValueError):
    """A bad name or hyperparameter: unknown algorithm or method, negative strength, zero budget."""


class CheckpointError(ClrlError, ValueError):
    """A checkpoint is missing, corrupt, or was not written by clrl."""


class RunExistsError(ClrlError, FileExistsError):
    """The run directory already holds a run, and overwriting was not asked for."""
