"""Exception types raised by clrl: bad input, and failures while a run trains."""

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


class TrainingError(ClrlError, RuntimeError):
    """A task failed while training or evaluating (e.g. its environment raised).

    The message names the task; the original exception is the ``__cause__``. The tasks completed before it
    keep their results and checkpoints, and ``resume`` continues from them.
    """


class NumericalError(TrainingError):
    """A loss, penalty, importance or network parameter became NaN or infinite; the message names the module
    (or the model) and the task."""
