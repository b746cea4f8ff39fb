"""SB3's hyperparameters checked against their documented ranges before anything trains.

SB3 accepts ``gamma=2``, ``clip_range=-1`` or ``net_arch=[0]`` and fails, if at all, in the middle of
training (``n_epochs=0`` ends PPO's ``train`` with an ``UnboundLocalError``, ``learning_rate=inf`` turns
the weights to NaN). :func:`check_hyperparameters` refuses such values with one line naming the culprit:
every number (nested ones included) must be finite, and the names SB3's algorithms share must lie in the
range their documentation gives (:data:`RANGES`). Names it does not know are left to the algorithm's
constructor, which refuses unknown ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from clrl.errors import ConfigError


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _probability(value: Any) -> bool:
    return is_number(value) and 0 <= value <= 1


def _positive(value: Any) -> bool:
    return is_number(value) and value > 0


def _non_negative(value: Any) -> bool:
    return is_number(value) and value >= 0


def _count(value: Any) -> bool:
    return is_integer(value) and value >= 1


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _train_freq(value: Any) -> bool:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return _count(value[0]) and value[1] in ("step", "episode")
    return _count(value)


def _ent_coef(value: Any) -> bool:  # SAC, TQC, CrossQ: "auto" or "auto_<initial value>"
    if isinstance(value, str):
        head, _, tail = value.partition("_")
        return head == "auto" and (not tail or _positive(_float(tail)))
    return _non_negative(value)


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (_positive, "a positive number"),
    "gamma": (_probability, "a discount in [0, 1]"),
    "gae_lambda": (_probability, "a number in [0, 1]"),
    "tau": (_probability, "a soft-update coefficient in [0, 1]"),
    "exploration_fraction": (_probability, "a fraction in [0, 1]"),
    "exploration_initial_eps": (_probability, "a probability in [0, 1]"),
    "exploration_final_eps": (_probability, "a probability in [0, 1]"),
    "clip_range": (_positive, "a positive number"),
    "clip_range_vf": (_optional(_positive), "a positive number or None"),
    "target_kl": (_optional(_positive), "a positive number or None"),
    "max_grad_norm": (_optional(_positive), "a positive number or None (sb3-contrib: no clipping)"),
    "vf_coef": (_non_negative, "a number >= 0"),
    "ent_coef": (_ent_coef, "a number >= 0 (SAC: or 'auto', 'auto_<positive number>')"),
    "target_policy_noise": (_non_negative, "a number >= 0"),
    "target_noise_clip": (_non_negative, "a number >= 0"),
    "n_steps": (_count, "a positive integer"),
    "batch_size": (_count, "a positive integer"),
    "n_epochs": (_count, "a positive integer"),
    "buffer_size": (_count, "a positive integer"),
    "learning_starts": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "train_freq": (_train_freq, "a positive integer or [positive integer, 'step' | 'episode']"),
    "gradient_steps": (lambda v: _count(v) or v == -1, "a positive integer or -1"),
    "target_update_interval": (_count, "a positive integer"),
    "policy_delay": (_count, "a positive integer"),
    "n_envs": (_count, "a positive integer"),
    "sde_sample_freq": (lambda v: is_integer(v) and v >= -1, "an integer >= -1"),
    "stats_window_size": (_count, "a positive integer"),
    "n_quantiles": (_count, "a positive integer"),
    "n_critics": (_count, "a positive integer"),
    "top_quantiles_to_drop_per_net": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
}
"""Hyperparameter name -> (check, what it must be), from SB3's and sb3-contrib's documentation."""


def check_hyperparameters(hyperparameters: Mapping[str, Any], where: str = "hyperparameter") -> None:
    """Refuse a non-finite number anywhere in ``hyperparameters``, a value of a known name outside its
    range, and a ``policy_kwargs.net_arch`` that is not positive layer widths. A schedule (a callable
    ``learning_rate`` or ``clip_range`` of Python code) is not checked.

    Raises:
        ConfigError: Naming the hyperparameter and what it must be.
    """
    for name, value in hyperparameters.items():
        check_finite_numbers(value, f"{where} {name}")
        if name in RANGES and not callable(value):
            check, what = RANGES[name]
            if not check(value):
                raise ConfigError(f"{where} {name} must be {what}, got {value!r}")
    policy_kwargs = hyperparameters.get("policy_kwargs")
    if isinstance(policy_kwargs, Mapping) and "net_arch" in policy_kwargs:
        _check_net_arch(policy_kwargs["net_arch"], f"{where} policy_kwargs.net_arch")


def check_finite_numbers(value: Any, where: str, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` naming ``where`` if ``value``, or a number nested in its dicts and lists, is NaN or
    infinite (a number from a file reaches an environment or an optimiser unchecked otherwise)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{where} must be a finite number, got {value!r}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_finite_numbers(item, f"{where}.{key}", error)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_finite_numbers(item, where, error)


def _check_net_arch(net_arch: Any, where: str) -> None:
    layers = list(net_arch.values()) if isinstance(net_arch, Mapping) else [net_arch]
    for widths in layers:
        if not isinstance(widths, (list, tuple)) or not all(_count(w) for w in widths):
            raise ConfigError(
                f"{where} must be a list of positive layer widths (or a dict of such lists), got {net_arch!r}"
            )
