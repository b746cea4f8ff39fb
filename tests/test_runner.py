"""The continual runner on tiny budgets: matrix, files, determinism, baselines, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE, cartpole_stream, make_model, tiny_ppo
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.vec_env import VecNormalize
from test_reliability import three_tasks

import clrl


def test_train_fills_the_matrix_and_writes_the_run(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    model = tiny_ppo(tiny_stream)
    result = clrl.train(model, tiny_stream, [clrl.L2()], logdir=tmp_path / "run", eval_episodes=2)
    assert result.matrix.shape == (3, 2)
    assert np.isfinite(result.matrix).all()
    assert set(result.metrics) >= {"acc", "bwt", "fwt", "forgetting"}
    assert result.metrics["acc"] == pytest.approx(result.matrix[-1].mean())
    # on-policy budgets round up to whole rollouts of 2 envs x 32 steps
    assert result.steps == [0, 128, 256]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert np.allclose(saved["matrix"], result.matrix)
    assert saved["completed_tasks"] == 2
    assert saved["config"]["method"] == "l2"
    assert saved["config"]["hyperparameters"]["n_steps"] == 32
    assert saved["versions"]["stable_baselines3"]
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["task01-normal.zip", "task02-flipped.zip"]


def test_row_zero_is_the_untrained_model(tiny_stream: clrl.TaskStream) -> None:
    model = tiny_ppo(tiny_stream)
    before = clrl.Evaluator(tiny_stream, n_episodes=2, seed=clrl.runner.EVAL_SEED_OFFSET)(model)
    result = clrl.train(tiny_ppo(tiny_stream), tiny_stream, eval_episodes=2)
    np.testing.assert_array_equal(result.matrix[0], before)


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_same_seed_same_matrix(algo: str) -> None:
    matrices = []
    for _ in range(2):
        model, stream = make_model(algo, seed=3)
        matrices.append(clrl.train(model, stream, seed=3, eval_episodes=2).matrix)
    np.testing.assert_array_equal(matrices[0], matrices[1])


def test_train_equals_the_plain_sb3_loop(tiny_stream: clrl.TaskStream) -> None:
    """With no module, clrl.train is set_env + learn per task: the runner adds nothing to training."""
    ours = tiny_ppo(tiny_stream)
    clrl.train(ours, tiny_stream, seed=5, eval_episodes=2, eval_freq=64)
    plain = tiny_ppo(tiny_stream)
    plain.set_random_seed(5)
    for i in range(len(tiny_stream)):
        plain.set_env(tiny_stream.make_vec_env(i, n_envs=2, seed=5 + 1000 * i))
        plain.learn(tiny_stream.steps(i), reset_num_timesteps=False)
    for (name, a), b in zip(
        ours.policy.state_dict().items(), plain.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_off_policy_buffer_is_emptied_and_warm_up_repeated_per_task() -> None:
    model, stream = make_model("dqn")
    assert isinstance(model, DQN)
    sizes = []

    class Probe(clrl.ContinualModule):
        def on_task_start(self, task: clrl.TaskInfo) -> None:
            assert self.model is not None
            sizes.append((self.model.replay_buffer.size(), self.model.learning_starts))  # type: ignore[attr-defined]

    clrl.train(model, stream, [Probe()], eval_episodes=1)
    assert sizes == [(0, 32), (0, 128 + 32)]
    assert model.learning_starts == 32  # restored after the task
    model2, _ = make_model("dqn")
    sizes.clear()
    clrl.train(model2, stream, [Probe()], eval_episodes=1, reset_buffer=False)
    assert sizes == [(0, 32), (128, 32)]


def test_eval_freq_records_forgetting_curves(tiny_stream: clrl.TaskStream) -> None:
    result = clrl.train(tiny_ppo(tiny_stream), tiny_stream, eval_episodes=1, eval_freq=64)
    assert [(step, task) for step, task, _ in result.curves] == [(64, 0), (192, 1)]  # boundaries: rows of R
    assert all(len(row) == 2 for _, _, row in result.curves)


def test_existing_run_is_never_overwritten_unless_asked(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    run = tmp_path / "run"
    clrl.train(tiny_ppo(tiny_stream), tiny_stream, logdir=run, eval_episodes=1, checkpoints=False)
    before = (run / "results.json").read_bytes()
    with pytest.raises(clrl.RunExistsError, match="overwrite"):
        clrl.train(tiny_ppo(tiny_stream), tiny_stream, logdir=run, eval_episodes=1)
    assert (run / "results.json").read_bytes() == before
    clrl.train(
        tiny_ppo(tiny_stream), tiny_stream, logdir=run, eval_episodes=1, overwrite=True, checkpoints=False
    )
    assert len(list(run.glob("events.out.tfevents.*"))) == 1


def test_model_with_other_spaces_is_refused(tiny_stream: clrl.TaskStream) -> None:
    hidden = cartpole_stream(task_id="hidden")
    with pytest.raises(clrl.StreamError, match="observation space"):
        clrl.train(tiny_ppo(hidden), tiny_stream)


def test_vec_normalize_is_refused(tiny_stream: clrl.TaskStream) -> None:
    model = PPO("MlpPolicy", VecNormalize(tiny_stream.make_vec_env(0)), n_steps=32, device=DEVICE)
    with pytest.raises(clrl.ConfigError, match="VecNormalize"):
        clrl.train(model, tiny_stream)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"modules": ["ewc"]}, clrl.ConfigError),
        ({"eval_episodes": 0}, clrl.ConfigError),
        ({"eval_freq": 0}, clrl.ConfigError),
    ],
)
def test_bad_arguments(tiny_stream: clrl.TaskStream, kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        clrl.train(tiny_ppo(tiny_stream), tiny_stream, **kwargs)


def test_same_module_twice_is_refused(tiny_stream: clrl.TaskStream) -> None:
    module = clrl.L2()
    with pytest.raises(clrl.ConfigError, match="twice"):
        clrl.train(tiny_ppo(tiny_stream), tiny_stream, [module, module])


def test_multitask_baseline_sees_every_task(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    seen = set()

    class Probe(clrl.ContinualModule):
        def _on_step(self) -> bool:
            seen.update(info["task_index"] for info in self.locals["infos"] if "task_index" in info)
            return True

    model = tiny_ppo(tiny_stream)
    result = clrl.train_multitask(model, tiny_stream, logdir=tmp_path / "mt", eval_episodes=1)
    assert result.matrix.shape == (3, 2)
    assert result.config["method"] == "multitask"
    model.learn(256, callback=Probe(), reset_num_timesteps=False)
    assert seen == {0, 1}


def test_cumulative_baseline_trains_each_task_on_the_tasks_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = three_tasks(cartpole_stream)
    seen: dict[int, set[int]] = {}

    class Probe(clrl.ContinualModule):
        def _on_step(self) -> bool:
            task = len(built) - 1
            seen.setdefault(task, set()).update(
                i["task_index"] for i in self.locals["infos"] if "task_index" in i
            )
            return True

    built: list[int] = []
    make = clrl.TaskStream.make_multitask_vec_env

    def recording(self: clrl.TaskStream, *args: object, tasks: int | None = None, **kwargs: object) -> object:
        built.append(len(self) if tasks is None else tasks)
        env = make(self, *args, tasks=tasks, **kwargs)  # type: ignore[arg-type]
        return env

    monkeypatch.setattr(clrl.TaskStream, "make_multitask_vec_env", recording)
    model = DQN("MlpPolicy", stream.make_vec_env(0), learning_starts=32, buffer_size=1000, device=DEVICE)
    probe = Probe()
    learn = model.learn

    def learn_with_probe(*args: object, callback: object = None, **kwargs: object) -> object:
        return learn(*args, callback=[c for c in (callback, probe) if c is not None], **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "learn", learn_with_probe)
    result = clrl.train_cumulative(  # no checkpoints: the patched learn does not pickle
        model, stream, logdir=tmp_path / "cumulative", eval_episodes=1, checkpoints=False
    )
    assert built == [1, 2, 3]  # task i on tasks 0..i
    assert seen == {0: {0}, 1: {0, 1}, 2: {0, 1, 2}}
    assert result.matrix.shape == (4, 3) and result.config["method"] == "cumulative"
    assert model.replay_buffer is not None and model.replay_buffer.size() == 3 * stream.steps(0)  # kept


def test_single_task_baseline_trains_a_fresh_model_per_task(
    tmp_path: Path, tiny_stream: clrl.TaskStream
) -> None:
    built = []

    def make(i: int) -> PPO:
        model = tiny_ppo(tiny_stream, i)
        built.append(model)
        return model

    result = clrl.train_single_task(make, tiny_stream, logdir=tmp_path / "st", eval_episodes=2)
    # Task 0's model is built twice: the untrained one row 0 evaluates, and the one that trains.
    assert len(built) == 3 and built[0].num_timesteps == 0
    assert all(m.num_timesteps == 128 for m in built[1:])
    assert result.reference.tolist() == [result.matrix[1, 0], result.matrix[2, 1]]
    assert result.metrics == {"acc": pytest.approx((result.matrix[1, 0] + result.matrix[2, 1]) / 2)}
    assert (tmp_path / "st" / "normal").is_dir() and (tmp_path / "st" / "flipped").is_dir()
    assert json.loads((tmp_path / "st" / "results.json").read_text())["config"]["method"] == "single-task"


def test_ensemble_evaluates_each_task_with_its_own_model(tmp_path: Path) -> None:
    stream = three_tasks(cartpole_stream)
    single = clrl.train_single_task(
        lambda i: tiny_ppo(stream, i), stream, logdir=tmp_path / "st", eval_episodes=2
    )
    ensemble = clrl.train_ensemble(
        lambda i: tiny_ppo(stream, i), stream, logdir=tmp_path / "en", eval_episodes=2
    )
    s, e = single.matrix, ensemble.matrix
    np.testing.assert_array_equal(e[0], s[0])
    for i in range(len(stream)):
        for j in range(len(stream)):
            assert e[i + 1, j] == (s[j + 1, j] if j <= i else s[i + 1, j]), (i, j)  # own model, or the newest
    assert ensemble.metrics["bwt"] == 0 and ensemble.metrics["forgetting_cw"] == 0
    assert ensemble.metrics["acc"] == pytest.approx(single.metrics["acc"])
    assert ensemble.config["method"] == "ensemble"


def test_reference_metrics_by_hand() -> None:
    ours = clrl.TrainResult(
        matrix=np.array([[0.0, 0.0], [100.0, 10.0], [40.0, 60.0]]),
        metrics={},
        task_names=["a", "b"],
        steps=[0, 10, 20],
        curves=[(5, 0, [50.0, 0.0]), (15, 1, [0.0, 30.0])],
        random_returns=np.array([0.0, 10.0]),
    )
    reference = clrl.TrainResult(
        matrix=np.array([[0.0, 0.0], [200.0, 0.0], [0.0, 110.0]]),
        metrics={},
        task_names=["a", "b"],
        steps=[0, 10, 20],
        curves=[(5, 0, [100.0, 0.0]), (15, 1, [0.0, 10.0])],
    )
    out = clrl.results.reference_metrics(ours, reference, 2)
    # normalised final row: (40 - 0) / 200 = 0.2 and (60 - 10) / 100 = 0.5
    assert out["acc_norm"] == pytest.approx(0.35)
    # task a: 0.2 - 0.5 = -0.3
    assert out["bwt_norm"] == pytest.approx(-0.3)
    # task b before training: (10 - 10) / 100 - (0 - 10) / 100 = 0.1
    assert out["fwt_norm"] == pytest.approx(0.1)
    # curves: task a 0.25 vs reference 0.5 -> (0.25 - 0.5) / 0.5 = -0.5; task b 0.2 vs 0 -> 0.2
    assert out["fwt_cw"] == pytest.approx(-0.15)


def test_reference_run_adds_normalised_metrics(tiny_stream: clrl.TaskStream) -> None:
    reference = clrl.train_single_task(
        lambda i: tiny_ppo(tiny_stream, i), tiny_stream, eval_episodes=2, eval_freq=64
    )
    assert [task for _, task, _ in reference.curves] == [0, 1]
    assert reference.random_returns is not None and np.all(reference.random_returns > 0)
    result = clrl.train(
        tiny_ppo(tiny_stream), tiny_stream, eval_episodes=2, eval_freq=64, reference=reference
    )
    assert {"acc_norm", "bwt_norm", "fwt_norm", "forgetting_norm", "fwt_cw"} <= set(result.metrics)
    with pytest.raises(clrl.ConfigError, match="reference"):
        other = clrl.TaskStream("o", tiny_stream.tasks[::-1], steps_per_task=128, task_id="observed")
        clrl.train(tiny_ppo(tiny_stream), other, reference=reference)


def test_results_json_reads_back(tmp_path: Path, tiny_stream: clrl.TaskStream) -> None:
    result = clrl.train(
        tiny_ppo(tiny_stream), tiny_stream, logdir=tmp_path / "r", eval_episodes=1, eval_freq=64
    )
    again = clrl.TrainResult.from_json(tmp_path / "r" / "results.json")
    np.testing.assert_array_equal(again.matrix, result.matrix)
    assert again.curves == result.curves and again.task_names == result.task_names
    np.testing.assert_array_equal(again.random_returns, result.random_returns)
    with pytest.raises(clrl.ConfigError, match="cannot read"):
        clrl.TrainResult.from_json(tmp_path / "missing.json")


def test_a_reference_run_of_other_settings_is_refused_naming_what_differs(tmp_path: Path) -> None:
    stream = cartpole_stream(steps=128)
    single = clrl.train_single_task(lambda i: tiny_ppo(stream, i), stream, eval_episodes=1)
    longer = cartpole_stream(steps=256)
    with pytest.raises(
        clrl.ConfigError, match=r"it differs in stream_spec\.steps_per_task \(128 against 256\)$"
    ):
        clrl.train(tiny_ppo(longer), longer, [clrl.L2()], eval_episodes=1, reference=single)
    with pytest.raises(
        clrl.ConfigError, match=r"differs in seed \(0 against 1\); eval_episodes \(1 against 2\)"
    ):
        clrl.train(tiny_ppo(stream), stream, eval_episodes=2, seed=1, reference=single)
    continual = clrl.train(tiny_ppo(stream), stream, eval_episodes=1)
    with pytest.raises(clrl.ConfigError, match="it is a 'finetune' run, not a single-task one"):
        clrl.train(tiny_ppo(stream), stream, eval_episodes=1, reference=continual)
    matched = clrl.train(tiny_ppo(stream), stream, [clrl.L2()], eval_episodes=1, reference=single)
    assert "acc_norm" in matched.metrics


def test_the_cli_says_why_it_does_not_normalise_by_a_mismatched_single_task_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import TINY_RUN

    from clrl.cli import main

    common = ["--logdir", str(tmp_path), *TINY_RUN, "batch_size=32"]
    assert main(["run", "cartpole-flip", "--method", "single-task", *common]) == 0
    assert main(["run", "cartpole-flip", "--method", "l2", *common, "--steps", "128"]) == 0
    out = capsys.readouterr().out
    assert "not normalising by the single-task run in" in out and "it differs in stream_spec" in out
    results = json.loads((tmp_path / "cartpole-flip" / "ppo-l2" / "seed0" / "results.json").read_text())
    assert "acc_norm" not in results["metrics"]


def test_a_damaged_single_task_run_beside_a_run_is_named_and_not_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import TINY_RUN

    from clrl.cli import main

    single = tmp_path / "cartpole-flip" / "ppo-single-task" / "seed0"
    single.mkdir(parents=True)
    (single / "results.json").write_text('{"matrix": [[1.0]]}')
    assert main(["run", "cartpole-flip", "--method", "l2", "--logdir", str(tmp_path), *TINY_RUN]) == 0
    out = capsys.readouterr().out
    assert "not normalising by the single-task run in" in out and "field 'task_names' is missing" in out


def test_online_performance_is_the_mean_return_of_the_training_episodes() -> None:
    stream = cartpole_stream(steps=128)
    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, n_epochs=1, device=DEVICE)
    result = clrl.train(model, stream, [], eval_episodes=1)
    played = [float(e["r"]) for e in model.ep_info_buffer]  # SB3's own record: fewer than its 100 here
    assert 0 < len(played) < 100
    assert result.metrics["training_episodes"] == len(played)
    assert result.metrics["online_performance"] == pytest.approx(np.mean(played))
