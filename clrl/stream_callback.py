"""A whole stream inside one ``learn``: :class:`StreamCallback` switches tasks on a schedule of steps."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from clrl import metrics
from clrl.algorithms import restart_replay
from clrl.boundaries import check_fit, check_modules
from clrl.callbacks import EpisodeReturns
from clrl.checks import RunLock, check_model, check_seed, prepare_logdir
from clrl.errors import ConfigError
from clrl.evaluation import EVAL_SEED_OFFSET, Evaluator
from clrl.experiment import make_modules
from clrl.logger import RunLogger
from clrl.modules.base import ContinualModule, TaskInfo, check_positive_int
from clrl.plasticity import PlasticityMonitor, monitor_for
from clrl.results import TrainResult, run_config, run_hparams, write_summary
from clrl.streams import TaskStream, make_stream


class _TaskVecEnv(VecEnvWrapper):
    """The model's environment during a stream: the current task's vectorised env, swapped at boundaries
    (SB3's rollout loops hold on to the model's env object for a whole rollout, so the object stays)."""

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)

    def switch(self, venv: VecEnv) -> np.ndarray:
        """Close the current task's env, continue on ``venv``, and return its first observations."""
        self.venv.close()
        self.venv = venv
        return venv.reset()  # type: ignore[return-value]

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        return self.venv.step_wait()


class StreamCallback(BaseCallback):
    """Learn a whole stream inside one ``learn`` call: tasks switch at their step budgets.

    ``model.learn(callback.total_steps, callback=callback)`` trains task 0 for its budget, then task 1, and
    so on, as :func:`clrl.train` does with one ``learn`` per task: at each boundary the modules end the task
    (EWC's Fisher, PackNet's pruning, ...) and begin the next, the model is evaluated on every task (one row
    of the return matrix), and with ``logdir`` the run is written as ``clrl.train`` writes it
    (``results.json``, TensorBoard's ``eval/<task>/return``, ``cl/*`` and the return-matrix heatmap). The
    modules are driven by this callback: pass only it to ``learn``. Strings configure it, so a YAML file
    (RL Baselines3 Zoo's ``callback:`` entry) can::

        callback = clrl.StreamCallback("cartpole-flip", modules=["ewc"], module_args={"strength": 100.0})
        model = PPO("MlpPolicy", "clrl/cartpole-flip.normal-v0")
        model.learn(callback.total_steps, callback=callback)

    What differs from :func:`clrl.train`:

    * The model's own environment gives only the spaces: at the start the callback puts the first task's
      environment in its place (``n_envs`` copies, seeded ``seed + 1000 * task``, the kind of vectorised
      env clrl builds), and at each boundary the next task's, closing the one it replaces.
    * Boundaries fall at the first rollout that starts once the task's budget is reached, so a task's
      budget rounds up to whole rollouts (as ``learn`` rounds it in ``clrl.train``); its last update is
      done before its end is signalled. On-policy modules that read the task's states (EWC, MAS) read the
      task's last rollout, kept for them when the next rollout begins.
    * Off-policy models: at each boundary the replay buffer is emptied and ``learning_starts`` is applied
      again, as ``clrl.train(reset_buffer=True)`` does; ``reset_buffer=False`` keeps the buffer.
    * ``learn`` may be given more steps than :attr:`total_steps` (RL Zoo's ``n_timesteps``): it stops at
      the first rollout that starts after the stream's last task is done.
    * No resume: a killed ``learn`` starts over.
    * A stream that hides its boundaries (``boundaries = "hidden"``) is learned without telling the
      modules: they begin one task (named after the stream, the stream's budget) at the first step and end
      it after the last, ``reset_buffer`` does not apply, and each task's end is only an evaluation point
      (a row of the return matrix, a plasticity measurement). Modules that need boundaries are refused
      before anything trains.

    Args:
        stream: A :class:`clrl.TaskStream`, or the name or path of a stream file.
        modules: Continual modules, or their method names (``"ewc"``, ``"l2"``; see ``clrl list``).
        module_args: Constructor arguments given to every module built from a name that takes them.
        steps_per_task: With a stream name or path: override its budget per task.
        eval_episodes: Episodes per task at each evaluation.
        seed: Seeds the task environments and the evaluation episodes (as in ``clrl.train``).
        reset_buffer: Off-policy: empty the replay buffer and repeat the warm-up at each new task.
        logdir: Run directory for ``results.json`` and TensorBoard; ``None`` writes nothing. It must not
            hold a run (use another directory, or ``overwrite``).
        overwrite: Replace a run ``logdir`` holds.
        plasticity: Measure the networks' plasticity during training and at every task boundary, as
            :func:`clrl.train` does (``True``: a default :class:`clrl.PlasticityMonitor` where the policy can
            be measured; ``False``: none; or the monitor to use).
        verbose: Print each row of the return matrix when ``>= 1``.
    """

    def __init__(
        self,
        stream: TaskStream | str,
        modules: Sequence[ContinualModule | str] = (),
        module_args: dict[str, Any] | None = None,
        steps_per_task: int | None = None,
        eval_episodes: int = 10,
        seed: int = 0,
        reset_buffer: bool = True,
        logdir: str | Path | None = None,
        plasticity: bool | PlasticityMonitor = True,
        overwrite: bool = False,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if isinstance(stream, TaskStream):
            if steps_per_task is not None:
                raise ConfigError("steps_per_task goes with a stream name; for a TaskStream use make_stream")
            self.stream = stream
        elif isinstance(stream, str | Path):
            if steps_per_task is not None:
                steps_per_task = check_positive_int(steps_per_task, "steps_per_task")
            self.stream = make_stream(stream, steps_per_task=steps_per_task)
        else:
            raise ConfigError(f"stream must be a TaskStream or a stream name, got {type(stream).__name__}")
        names = [m for m in modules if isinstance(m, str)]
        built = make_modules("+".join(names), dict(module_args or {})) if names else []
        if module_args and not names:
            raise ConfigError("module_args go with module names; pass arguments to module objects directly")
        objects = iter(built)
        self.modules = check_modules([next(objects) if isinstance(m, str) else m for m in modules])
        self.eval_episodes = check_positive_int(eval_episodes, "eval_episodes")
        check_seed(seed, len(self.stream))
        self.seed = seed
        self.reset_buffer = reset_buffer
        self.logdir = None if logdir is None else Path(logdir)
        self.overwrite = overwrite
        self._keep: tuple[str, ...] = ()  # files of logdir that are not the run's (a sweep's spec and log)
        self.plasticity = plasticity
        self.monitor: PlasticityMonitor | None = None
        """The plasticity monitor of the running ``learn`` (``None`` before it, or when there is none)."""
        self.result: TrainResult | None = None
        """The return matrix and metrics so far (rows filled at each boundary)."""
        self._task = 0
        self._finished = False
        self._ends: list[int] = []
        self._kept: Any = None
        self._env: _TaskVecEnv | None = None
        self._evaluator: Evaluator | None = None
        self._logger: RunLogger | None = None
        self._lock: RunLock | None = None
        self._learning_starts: int | None = None
        self._episodes = EpisodeReturns()

    @property
    def total_steps(self) -> int:
        """The stream's budget: the ``total_timesteps`` to pass to ``learn``."""
        return sum(self.stream.steps(i) for i in range(len(self.stream)))

    # ---------------------------------------------------------------- the children: the modules
    def _init_callback(self) -> None:
        for module in self.modules:
            module.init_callback(self.model)

    def _on_training_start(self) -> None:
        model, stream = self.model, self.stream
        check_fit(self.modules, stream, model)
        check_model(model, stream)
        self.monitor = monitor_for(self.plasticity, model)
        root, self._lock = prepare_logdir(self.logdir, overwrite=self.overwrite, keep=self._keep)
        try:
            self._start(root)
        except BaseException:
            self._close()
            raise

    def _start(self, root: Path | None) -> None:
        model, stream, n = self.model, self.stream, len(self.stream)
        start = model.num_timesteps
        self._ends = list(np.cumsum([stream.steps(i) for i in range(n)]) + start)
        self._evaluator = Evaluator(stream, self.eval_episodes, self.seed + EVAL_SEED_OFFSET)
        self._episodes = EpisodeReturns()
        method = "+".join(m.name for m in self.modules) or "finetune"
        config = run_config(model, stream, method, self.seed, self.eval_episodes, self.modules)
        config["schedule"] = "StreamCallback"
        self.result = TrainResult(np.full((n + 1, n), np.nan), {}, stream.task_names, [], [], config, root)
        self._logger = RunLogger(root, model) if root else None
        if self._logger:
            self._logger.layout(stream.task_names, stream.metric)
        self._learning_starts = getattr(model, "learning_starts", None)
        model.set_random_seed(self.seed)
        self._env = _TaskVecEnv(self._task_env(0))
        self._use_env(self._env, self._env.reset())
        self._evaluate_row(0)
        self.result.random_returns = self._evaluator.random_returns()
        self._begin(0)
        for module in self.modules:
            module.on_training_start(self.locals, self.globals)
        if self.monitor is not None:
            self.monitor.init_callback(model)
            self.monitor.records = self.result.plasticity
            self.monitor.on_training_start(self.locals, self.globals)

    def _on_step(self) -> bool:
        if self._finished:  # learn was given more steps than the stream has
            return False
        self._episodes.add(self.locals.get("infos", ()))
        for module in self.modules:
            module.update_locals(self.locals)
            if not module.on_step():
                return False
        return True

    def _on_rollout_start(self) -> None:
        while self._task + 1 < len(self.stream) and self.num_timesteps >= self._ends[self._task]:
            self._boundary()
        self._finished = self.num_timesteps >= self._ends[-1]
        for module in self.modules:
            module.on_rollout_start()

    def _on_rollout_end(self) -> None:
        for module in self.modules:
            module.update_locals(self.locals)
            module.on_rollout_end()
        if self.monitor is not None:
            self.monitor.on_rollout_end()
        if isinstance(self.model, OnPolicyAlgorithm) and self.num_timesteps >= self._ends[self._task]:
            self._kept = copy.deepcopy(self.model.rollout_buffer)  # the next rollout start clears it

    def _on_training_end(self) -> None:
        if self._evaluator is None:  # ended already (RL Zoo calls on_training_end a second time)
            return
        try:
            for module in self.modules:
                module.on_training_end()
            if self.monitor is not None:
                self.monitor.on_training_end()
            if self.result is not None and np.isnan(self.result.matrix[self._task + 1]).all():
                # Learn ended after the task's last update (its buffer intact), or stopped at the first
                # step of a rollout past the stream (the buffer cleared: the kept copy has the states).
                self._end(self._task, keep=self._kept if self._finished else None)
            if self._logger is not None and self.result is not None:
                self._logger.hparams(run_hparams(self.result.config), self.result.metrics)
        finally:
            self._close()

    def _close(self) -> None:
        """Drop the modules' open task, put ``learning_starts`` back, close the evaluation envs, the
        logger and the run directory's lock."""
        for module in self.modules:
            module.abort_task()
        if self._learning_starts is not None:
            self.model.learning_starts = self._learning_starts  # type: ignore[attr-defined]
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None
        if self._logger is not None:
            self._logger.close()
            self._logger = None
        if self._lock is not None:
            self._lock.release()

    # ---------------------------------------------------------------- boundaries
    def _task_env(self, i: int) -> VecEnv:
        return self.stream.make_vec_env(i, n_envs=self.model.n_envs, seed=self.seed + 1000 * i)

    def _use_env(self, env: VecEnv, obs: Any) -> None:
        """Make ``env`` the model's env and ``obs`` its current observations, as ``learn`` does at start."""
        model = self.model
        replaced = model.get_env()
        if replaced is not env:
            model.set_env(env)
            if replaced is not None:
                replaced.close()
        model._last_obs = obs
        model._last_episode_starts = np.ones((env.num_envs,), dtype=bool)

    def _begin(self, i: int) -> None:
        if self.stream.boundaries == "hidden":
            if i > 0:
                return  # the modules are not told: one task spans the stream
            task = TaskInfo(0, self.stream.name, self.total_steps)
        else:
            task = TaskInfo(i, self.stream.tasks[i].name, self.stream.steps(i))
        for module in self.modules:
            module.set_task(i)
            module.begin_task(self.model, task)

    def _end(self, i: int, keep: Any) -> None:
        model = self.model
        fresh = getattr(model, "rollout_buffer", None)
        if keep is not None:
            model.rollout_buffer = keep  # type: ignore[attr-defined]
        try:
            if self.stream.boundaries != "hidden" or i == len(self.stream) - 1:
                for module in self.modules:
                    module.end_task()
            if self.monitor is not None:
                self.monitor.measure(task=i)  # on the task's last states
        finally:
            if keep is not None:
                model.rollout_buffer = fresh  # type: ignore[attr-defined]
        self._evaluate_row(i + 1)

    def _boundary(self) -> None:
        i = self._task
        self._end(i, self._kept)
        self._kept = None
        self._task = i + 1
        assert self._env is not None
        self._use_env(self._env, self._env.switch(self._task_env(i + 1)))
        model = self.model
        hidden = self.stream.boundaries == "hidden"
        buffer = getattr(model, "replay_buffer", None)
        if self.reset_buffer and not hidden and isinstance(model, OffPolicyAlgorithm) and buffer is not None:
            assert self._learning_starts is not None
            restart_replay(model, self._learning_starts)
        self._begin(i + 1)

    def _evaluate_row(self, row: int) -> None:
        assert self.result is not None and self._evaluator is not None
        result, stream, step = self.result, self.stream, self.model.num_timesteps
        current = max(row - 1, 0)
        result.matrix[row] = self._evaluator(self.model, self.modules, current_task=current)
        result.steps.append(step)
        if row > 0:
            done = result.matrix[: row + 1, :row]
            result.metrics = metrics.summary(done)
            result.metrics.update(metrics.cycle_summary(done, result.curves, stream.cycle_length))
            self._episodes.record(result.metrics)
            result.module_stats.append(
                {m.name: {"state_bytes": m.state_bytes(), **m.log_scalars()} for m in self.modules}
            )
        if self._logger is not None:
            self._logger.eval_row(step, stream.task_names, result.matrix[row], stream.metric)
            if row > 0:
                self._logger.task_end(step, row - 1, stream.task_names, result.matrix, result.metrics)
        if result.logdir is not None:
            write_summary(result.logdir, result, row)
        if self.verbose >= 1:
            cells = ", ".join(f"{v:.1f}" for v in result.matrix[row])
            print(f"Return matrix row {row} at step {step}: {cells}")
