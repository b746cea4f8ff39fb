"""Every task of every built-in stream as a Gymnasium id, ``clrl/<stream>.<task>-v0``.

Importing clrl registers them, so tools that build their environment from an id (RL Baselines3 Zoo's
``--env``, with ``--gym-packages clrl``) can start from a stream's task: ``gym.make("clrl/cartpole-flip.
normal-v0")`` is task ``normal`` of ``cartpole-flip`` with its attributes, wrappers and, when the stream
observes it, the task id appended to the observation, exactly as ``stream.make_env(index)`` builds it.
"""

from __future__ import annotations

import sys
from typing import Any

import gymnasium as gym

from clrl.streams import builtin_streams, make_stream

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENTRY_POINT = "clrl.registration:make_task_env"


def task_env_id(stream: str, task: str) -> str:
    """The Gymnasium id of ``task`` of the built-in ``stream``."""
    return f"clrl/{stream}.{task}-v0"


def make_task_env(stream: str, task: str, render_mode: str | None = None) -> gym.Env[Any, Any]:
    """Build task ``task`` of the built-in stream ``stream`` (the entry point of the registered ids)."""
    built = make_stream(stream, validate=False)
    return built.make_env(built.task_names.index(task), render_mode=render_mode)


def register_streams() -> list[str]:
    """Register every task of every built-in stream (idempotent); return the ids.

    Only the stream files' task names are read here: nothing is imported or built until ``gym.make``, so
    streams whose extras are not installed (MiniGrid, Meta-World) register too and fail only when made.
    """
    ids = []
    for name, path in builtin_streams().items():
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        for task in data.get("tasks", []):
            env_id = task_env_id(name, str(task["name"]))
            if env_id not in gym.registry:
                gym.register(
                    env_id, entry_point=ENTRY_POINT, kwargs={"stream": name, "task": str(task["name"])}
                )
            ids.append(env_id)
    return ids
