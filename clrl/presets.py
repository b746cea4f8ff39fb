"""Per-stream, per-algorithm hyperparameters used by the ``clrl`` command.

Preset files live in the repository's ``agents/presets/`` and ship inside the package. A stream uses
``<stream>.toml`` if it exists, else the file of its family, the part of its name before the first ``-``
(``cartpole-flip`` uses ``cartpole.toml``), else SB3's defaults. Each table is an algorithm; its keys are
SB3 constructor arguments, plus ``policy`` (default ``"MlpPolicy"``) and ``n_envs`` (default 1)::

    [ppo]
    n_envs = 8
    learning_rate = 0.001
    policy_kwargs = { net_arch = [64, 64], activation_fn = "relu" }

``policy_kwargs.activation_fn`` may name its ``torch.nn`` class (``"ReLU"``, ``"Tanh"``, ...; any case),
one of clrl's layer-normalised activations (``"layernorm-relu"``, ``"layernorm-tanh"``,
:mod:`clrl.networks`) or ``"crelu"`` (which builds the model with :func:`clrl.networks.crelu_policy`),
and ``policy_kwargs.optimizer_class`` its ``torch.optim`` class (``"Adam"``, ``"RMSprop"``, ...; any case)
or ``"trac-adam"`` (:class:`clrl.optimizers.TRACAdam`), so that TOML files and ``clrl run --hp`` can set
them.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from stable_baselines3 import DQN
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from clrl._data import data_dir
from clrl.algorithms import get_algorithm
from clrl.errors import ConfigError
from clrl.hyperparameters import check_hyperparameters
from clrl.networks import CRELU_POLICIES, NORMALISED_ACTIVATIONS, CReLU, crelu_policy
from clrl.streams import TaskStream

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def preset(stream_name: str, algorithm: str) -> dict[str, Any]:
    """Hyperparameters for ``algorithm`` on ``stream_name`` (empty: SB3's defaults)."""
    folder = data_dir("_presets")
    for path in (folder / f"{stream_name}.toml", folder / f"{stream_name.split('-')[0]}.toml"):
        if path.is_file():
            table = tomllib.loads(path.read_text(encoding="utf-8"))
            if algorithm.lower() in table:
                return dict(table[algorithm.lower()])
    return {}


def algorithm_family(algorithm: str) -> str | None:
    """The family whose module defaults ``algorithm`` uses: ``"on-policy"`` (PPO, A2C, RecurrentPPO, TRPO),
    ``"q-learning"`` (DQN, QR-DQN), ``"off-policy"`` (SAC, TD3, TQC, CrossQ, DDPG), ``None`` for others
    (ARS)."""
    cls = get_algorithm(algorithm)
    if issubclass(cls, OnPolicyAlgorithm):
        return "on-policy"
    if not issubclass(cls, OffPolicyAlgorithm):
        return None
    return "q-learning" if issubclass(cls, DQN) or cls.__name__ == "QRDQN" else "off-policy"


def module_defaults(method: str, algorithm: str) -> dict[str, Any]:
    """The hyperparameters ``agents/presets/modules.toml`` gives module ``method`` (one name, as on the
    command line) for ``algorithm``'s family; empty when it gives none."""
    family = algorithm_family(algorithm)
    path = data_dir("_presets") / "modules.toml"
    if family is None or not path.is_file():
        return {}
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    return dict(table.get(family, {}).get(method, {}))


def hyperparameters(
    stream_name: str, algorithm: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The preset of ``algorithm`` on ``stream_name`` updated by ``overrides``, checked
    (:func:`clrl.hyperparameters.check_hyperparameters`).

    Raises:
        ConfigError: A value outside its documented range or not finite.
    """
    kwargs = {**preset(stream_name, algorithm), **(overrides or {})}
    check_hyperparameters(kwargs)
    return kwargs


def activation_class(name: str) -> type[torch.nn.Module]:
    """The ``torch.nn`` activation class called ``name``, case-insensitively (``"relu"`` -> ``nn.ReLU``),
    one of :data:`clrl.networks.NORMALISED_ACTIVATIONS` (``"layernorm-relu"``) or ``"crelu"``
    (:class:`clrl.networks.CReLU`).

    Raises:
        ConfigError: No activation of that name in ``torch.nn``.
    """
    names = [n for n in torch.nn.modules.activation.__all__ if n not in ("MultiheadAttention", "Threshold")]
    key = name.lower().replace("_", "")
    ours = {**NORMALISED_ACTIVATIONS, "crelu": CReLU}
    normalised = {n.replace("-", ""): cls for n, cls in ours.items()}
    found = {n.lower(): getattr(torch.nn, n) for n in names}.get(key) or normalised.get(key.replace("-", ""))
    if found is None:
        raise ConfigError(
            f"activation_fn {name!r} is not an activation of torch.nn ({', '.join(names)}) or one of "
            f"{', '.join(ours)}"
        )
    return found


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` optimiser class called ``name``, case-insensitively (``"adam"`` ->
    ``torch.optim.Adam``), or ``"trac-adam"``: :class:`clrl.optimizers.TRACAdam` (the ``trac`` extra).

    Raises:
        ConfigError: No optimiser of that name, or ``"trac-adam"`` without its extra.
    """
    key = name.lower().replace("_", "-")
    if key == "trac-adam":
        try:
            from clrl.optimizers import TRACAdam
        except ImportError as exc:
            raise ConfigError(
                f'optimizer_class "trac-adam" needs pytorch-optimizer ({exc}); pip install "clrl[trac]"'
            ) from None
        return TRACAdam
    # not LBFGS (its step needs a closure), SparseAdam (sparse gradients) or Muon (matrices only)
    unfit = ("Optimizer", "LBFGS", "SparseAdam", "Muon")
    names = [n for n in torch.optim.__all__ if n[0].isupper() and n not in unfit]
    found = {n.lower(): getattr(torch.optim, n) for n in names}.get(key)
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise ConfigError(
            f"optimizer_class {name!r} is not an optimiser of torch.optim ({', '.join(names)}) or trac-adam"
        )
    return found


NAMED_CLASSES = {"activation_fn": activation_class, "optimizer_class": optimizer_class}
"""The ``policy_kwargs`` entries a preset or ``--hp`` may give as a name, and what resolves the name."""


def _crelu_policy(cls: type[BaseAlgorithm], policy: Any) -> Any:
    """The policy that widens the layers after CReLU activations in place of SB3's ``MlpPolicy``."""
    if policy == "MlpPolicy":
        return crelu_policy(cls)
    if policy in CRELU_POLICIES.values():
        return policy
    raise ConfigError(
        f"activation_fn crelu needs clrl's CReLU policy (its layers read twice the units); "
        f"{getattr(policy, '__name__', policy)} cannot widen them: choose another activation_fn"
    )


def make_model(
    algorithm: str,
    stream: TaskStream,
    seed: int,
    overrides: dict[str, Any] | None = None,
    task_index: int = 0,
    device: str = "auto",
) -> BaseAlgorithm:
    """Build ``algorithm`` with its preset for ``stream`` (updated by ``overrides``) on task ``task_index``.

    Raises:
        ConfigError: Unknown algorithm, unknown hyperparameter, a value outside its range, or an algorithm
            that does not support the stream's spaces.
    """
    cls = get_algorithm(algorithm)
    kwargs = hyperparameters(stream.name, algorithm, overrides)
    policy = kwargs.pop("policy", "MlpPolicy")
    policy_kwargs = kwargs.get("policy_kwargs")
    if isinstance(policy_kwargs, dict):
        kwargs["policy_kwargs"] = {
            key: NAMED_CLASSES[key](value) if key in NAMED_CLASSES and isinstance(value, str) else value
            for key, value in policy_kwargs.items()
        }
        if kwargs["policy_kwargs"].get("activation_fn") is CReLU:
            policy = _crelu_policy(cls, policy)
    n_envs = kwargs.pop("n_envs", 1)
    if not isinstance(n_envs, int) or n_envs < 1:
        raise ConfigError(f"n_envs must be a positive integer, got {n_envs!r}")
    env = stream.make_vec_env(task_index, n_envs=n_envs, seed=seed)
    try:
        return cls(policy, env, seed=seed, device=device, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad hyperparameter for {cls.__name__}: {exc}") from exc
    except AssertionError as exc:  # SB3 asserts supported action spaces
        raise ConfigError(f"{cls.__name__} cannot learn stream {stream.name!r}: {exc}") from exc
    except Exception as exc:  # SB3 and torch reject bad values in many ways (ValueError, RuntimeError, ...)
        raise ConfigError(f"{cls.__name__} on stream {stream.name!r}: {type(exc).__name__}: {exc}") from exc
