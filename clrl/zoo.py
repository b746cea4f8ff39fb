"""RL Baselines3 Zoo hyperparameter files read as clrl presets (``clrl run ... --hyperparams FILE.yml``).

A Zoo file maps env ids to SB3 constructor arguments plus a few keys of its own. clrl takes the entry of
the stream's environment (its first task's ``env_id``, e.g. ``CartPole-v1``) and turns it into
hyperparameters, *reading it as data*: the Zoo evaluates ``policy_kwargs`` strings as Python, clrl parses
them and accepts only literals, ``dict(...)`` and activation names (``nn.ReLU``), so a file runs no code.

What changes, and why:

* ``n_timesteps`` is dropped: a stream's budgets are per task.
* ``lin_<x>`` schedules become the constant ``<x>``: SB3 computes schedule progress per ``learn`` call, so
  a linear schedule would resume part-way on every task (README, "What happens between tasks").
* ``normalize`` (VecNormalize) is refused, as ``clrl.train`` refuses VecNormalize; ``env_wrapper``,
  ``vec_env_wrapper``, ``frame_stack`` and ``callback`` are refused too: a stream's tasks define their
  wrappers, and clrl's modules are its callbacks. Other keys go to the algorithm as they are.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from clrl.errors import ConfigError

REFUSED = ("normalize", "normalize_kwargs", "env_wrapper", "vec_env_wrapper", "frame_stack", "callback")
"""Zoo keys clrl cannot honour (see the module docstring)."""

DROPPED = ("n_timesteps",)


def zoo_file(algo: str) -> Path:
    """The Zoo's own tuned hyperparameter file of ``algo`` (``--hyperparams zoo``).

    Raises:
        ConfigError: RL Baselines3 Zoo is not installed, or has no file for ``algo``.
    """
    try:
        import rl_zoo3
    except ImportError as exc:
        raise ConfigError("--hyperparams zoo needs RL Baselines3 Zoo: pip install 'clrl[zoo]'") from exc
    path = Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo.lower()}.yml"
    if not path.is_file():
        raise ConfigError(f"RL Baselines3 Zoo has no hyperparameter file for {algo!r}")
    return path


def zoo_hyperparameters(path: str | Path, env_id: str) -> tuple[dict[str, Any], list[str]]:
    """The hyperparameters of ``env_id``'s entry in the Zoo file ``path``, and notes on what changed.

    Raises:
        ConfigError: The file is unreadable or not a Zoo file, has no entry for ``env_id``, or asks for
            what clrl refuses (VecNormalize, wrappers, callbacks, a ``policy_kwargs`` that is not data).
    """
    try:
        import yaml
    except ImportError as exc:
        raise ConfigError("reading a Zoo hyperparameter file needs PyYAML: pip install 'clrl[zoo]'") from exc
    path = Path(path)
    try:
        table = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the Zoo hyperparameter file {str(path)!r}: {exc}") from exc
    if not isinstance(table, dict):
        raise ConfigError(f"{str(path)!r} is not a Zoo hyperparameter file (env ids to settings)")
    entry = table.get(env_id)
    if not isinstance(entry, dict):
        known = ", ".join(str(k) for k in list(table)[:12])
        raise ConfigError(f"{str(path)!r} has no settings for {env_id!r} (it has: {known}, ...)")
    hp: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in entry.items():
        key = str(key)
        if key in DROPPED:
            continue
        if key in REFUSED:
            if key == "normalize" and value is False:
                continue
            raise ConfigError(f"{str(path)!r}, {env_id}: {key!r} is not supported by clrl (see clrl.zoo)")
        if isinstance(value, str) and value.startswith("lin_"):
            value = _number(value[len("lin_") :], f"{env_id}: {key}")
            notes.append(f"{key}: linear schedule from {value} read as the constant {value}")
        elif key == "policy_kwargs" and isinstance(value, str):
            value = parse_policy_kwargs(value)
        hp[key] = value
    return hp, notes


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: {text!r} is not a number") from exc


def parse_policy_kwargs(text: str) -> dict[str, Any]:
    """Parse a Zoo ``policy_kwargs`` string such as ``"dict(net_arch=[64, 64], activation_fn=nn.ReLU)"``
    without evaluating it: literals, ``dict(...)`` and ``nn.<Activation>`` (kept as its name, which clrl's
    presets resolve) only.

    Raises:
        ConfigError: Anything else (a call, a name, an expression).
    """
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"policy_kwargs {text!r} is not a Python expression: {exc.msg}") from exc
    value = _literal(tree, text)
    if not isinstance(value, dict):
        raise ConfigError(f"policy_kwargs {text!r} is not a dict")
    return value


def _literal(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        items = [_literal(e, text) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        keys = [_literal(k, text) if k is not None else None for k in node.keys]
        if None not in keys:
            return {k: _literal(v, text) for k, v in zip(keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        operand = _literal(node.operand, text)
        if isinstance(operand, int | float) and not isinstance(operand, bool):
            return -operand
    is_dict = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
    if is_dict and not node.args and all(kw.arg is not None for kw in node.keywords):  # type: ignore[attr-defined]
        return {kw.arg: _literal(kw.value, text) for kw in node.keywords}  # type: ignore[attr-defined]
    if isinstance(node, ast.Attribute) and _dotted(node.value) in ("nn", "th.nn", "torch.nn"):
        return node.attr  # an activation class by name, e.g. "ReLU"
    raise ConfigError(
        f"policy_kwargs {text!r}: {ast.unparse(node)!r} is not data (clrl reads literals, dict(...) and "
        "nn.<Activation> only)"
    )


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""
