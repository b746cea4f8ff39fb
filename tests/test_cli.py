"""The clrl command: list, run, and clear errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE, TINY_RUN

import clrl
from clrl.cli import main
from clrl.presets import make_model, preset

TINY = [
    *TINY_RUN,
    "batch_size=32",
    "n_epochs=1",
    "policy_kwargs={ net_arch = [8] }",
]


def test_list_names_streams_algorithms_and_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in (
        "cartpole-flip",
        "cartpole-physics",
        "ppo",
        "dqn",
        "sac",
        "finetune",
        "l2",
        "replay",
        "clear",
        "behaviour-cloning",
        "clonex",
        "agem",
        "packnet",
        "pendulum-physics",
        "multitask",
        "single-task",
    ):
        assert word in out


def test_run_writes_one_directory_per_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "run",
            "cartpole-flip",
            "--method",
            "l2",
            "--method-arg",
            "strength=5",
            "--seeds",
            "0",
            "1",
            "--logdir",
            str(tmp_path),
            *TINY,
        ]
    )
    assert code == 0
    for seed in (0, 1):
        run = tmp_path / "cartpole-flip" / "ppo-l2" / f"seed{seed}"
        results = json.loads((run / "results.json").read_text())
        assert len(results["matrix"]) == 5
        assert results["config"]["modules"][0]["config"]["strength"] == 5.0
        assert results["config"]["hyperparameters"]["n_steps"] == 32
    out = capsys.readouterr().out
    assert "untrained" in out and "acc " in out and "over 2 seeds" in out


@pytest.mark.parametrize("method", ["multitask", "single-task"])
def test_baselines_run_by_name(tmp_path: Path, method: str) -> None:
    assert main(["run", "cartpole-physics", "--method", method, "--logdir", str(tmp_path), *TINY]) == 0
    assert (tmp_path / "cartpole-physics" / f"ppo-{method}" / "seed0" / "results.json").is_file()


def test_a_single_task_run_in_the_logdir_becomes_the_reference(tmp_path: Path) -> None:
    common = ["--logdir", str(tmp_path), "--eval-freq", "32", *TINY]
    assert main(["run", "cartpole-flip", "--method", "single-task", *common]) == 0
    assert main(["run", "cartpole-flip", *common]) == 0
    results = json.loads((tmp_path / "cartpole-flip" / "ppo-finetune" / "seed0" / "results.json").read_text())
    assert {"acc_norm", "bwt_norm", "fwt_norm", "forgetting_norm"} <= set(results["metrics"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "no-such-stream"], "no stream named 'no-such-stream'"),
        (["run", "cartpole-flip", "--algo", "ppo2"], "unknown algorithm 'ppo2'; choose one of: a2c"),
        (["run", "cartpole-flip", "--method", "ewc2"], "unknown method 'ewc2'; choose one of: finetune, l2"),
        (["run", "cartpole-flip", "--method", "l2", "--method-arg", "strength=-1"], "strength must be"),
        (["run", "cartpole-flip", "--method", "l2", "--method-arg", "colour=1"], "bad module argument"),
        (["run", "cartpole-flip", "--hp", "n_stepz=3"], "bad hyperparameter for PPO"),
        (["run", "cartpole-flip", "--hp", "oops"], "--hp must look like key=value"),
        (["run", "cartpole-flip", "--algo", "sac"], "SAC cannot learn stream 'cartpole-flip'"),
        (
            ["run", "cartpole-flip", "--steps", "0"],
            "steps_per_task must be an integer in [1, 10_000_000_000]",
        ),
        (["run", "cartpole-flip", "--steps", str(10**29)], "steps_per_task must be an integer in [1, "),
        (["run", "cartpole-flip", "--hp", "learning_rate=inf"], "learning_rate must be a finite number"),
        (["run", "cartpole-flip", "--hp", "learning_rate=1e400"], "learning_rate must be a finite number"),
        (["run", "cartpole-flip", "--hp", "ent_coef=nan"], "ent_coef must be a finite number, got nan"),
        (["run", "cartpole-flip", "--hp", "max_grad_norm=nan"], "max_grad_norm must be a finite number"),
        (["run", "cartpole-flip", "--hp", "n_epochs=0"], "n_epochs must be a positive integer, got 0"),
        (["run", "cartpole-flip", "--hp", "gamma=2"], "gamma must be a discount in [0, 1], got 2"),
        (["run", "cartpole-flip", "--hp", "clip_range=-1"], "clip_range must be a positive number, got -1"),
        (["run", "cartpole-flip", "--hp", "policy_kwargs={ net_arch = [0] }"], "net_arch must be a list of"),
        (["run", "cartpole-flip", "--algo", "sac", "--hp", "ent_coef='often'"], "ent_coef must be a number"),
        (["run", "cartpole-flip", "--threads", "0"], "--threads must be a positive integer"),
        (
            ["run", "cartpole-flip", "--hp", 'policy_kwargs={ activation_fn = "relux" }'],
            "activation_fn 'relux' is not an activation of torch.nn (",
        ),
    ],
)
def test_bad_input_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main([*args, "--logdir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clrl: error: ") and message in err
    assert not list(tmp_path.rglob("results.json"))


def test_existing_run_is_kept_without_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "cartpole-flip", "--logdir", str(tmp_path), *TINY]
    assert main(args) == 0
    results = tmp_path / "cartpole-flip" / "ppo-finetune" / "seed0" / "results.json"
    before = results.read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert results.read_bytes() == before
    assert main([*args, "--overwrite"]) == 0


def test_presets_cover_the_builtin_streams() -> None:
    from clrl.streams import make_stream

    for name, algos in (
        ("cartpole-flip", ("ppo", "a2c", "dqn")),
        ("cartpole-physics", ("ppo", "a2c", "dqn")),
        ("pendulum-physics", ("sac", "td3")),
        ("pendulum-flip", ("sac", "td3")),
    ):
        for algo in algos:
            assert preset(name, algo), (name, algo)
            model = make_model(algo, make_stream(name), seed=0, device=DEVICE)
            assert model.seed == 0
    assert preset("unknown-stream", "ppo") == {}


def test_activation_is_named_in_hyperparameters(tmp_path: Path) -> None:
    hp = 'policy_kwargs={ net_arch = [8], activation_fn = "relu" }'
    assert main(["run", "cartpole-flip", "--logdir", str(tmp_path), *TINY[:-1], hp]) == 0
    run = tmp_path / "cartpole-flip" / "ppo-finetune" / "seed0"
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["policy_kwargs"] == {"net_arch": [8], "activation_fn": "ReLU"}
    model, _ = clrl.load(sorted((run / "checkpoints").glob("*.zip"))[-1], device=DEVICE)
    layers = list(model.policy.mlp_extractor.modules())
    assert sum(isinstance(m, torch.nn.ReLU) for m in layers) == 2  # policy and value network
    assert not any(isinstance(m, torch.nn.Tanh) for m in layers)


def test_threads_are_set_for_the_run_and_recorded(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    assert main(["run", "cartpole-flip", "--logdir", str(tmp_path), *TINY, "--threads", "1"]) == 0
    results = json.loads((tmp_path / "cartpole-flip" / "ppo-finetune" / "seed0" / "results.json").read_text())
    assert results["config"]["torch_threads"] == 1
    assert torch.get_num_threads() == before  # restored after the run


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "clrl"
    out = subprocess.run([str(script), "list"], capture_output=True, text=True, check=True)
    assert "cartpole-flip" in out.stdout
    bad = subprocess.run([str(script), "run", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_matrix_table_keeps_long_task_names_whole() -> None:
    import numpy as np

    from clrl import TrainResult

    table = TrainResult(np.arange(6.0).reshape(3, 2), {}, ["a", "a-very-long-task-name"], [0, 1, 2]).table()
    lines = table.splitlines()
    assert lines[2].split() == ["1.", "a", "2.0", "3.0"]
    noisy = TrainResult(np.arange(6.0).reshape(3, 2), {"acc": 50.199999999999996}, ["a", "b"], [0, 1, 2])
    assert str(noisy).splitlines()[-1] == "acc 50.2"  # print(result): the table, metrics rounded
    assert lines[3].split() == ["2.", "a-very-long-task-name", "4.0", "5.0"]


def test_replay_methods_run_by_name_and_refuse_a_hidden_task_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloning = ["--method", "behaviour-cloning", "--method-arg", "budget=100", "--logdir", str(tmp_path)]
    assert main(["run", "cartpole-flip", *cloning, *TINY]) == 0
    run = tmp_path / "cartpole-flip" / "ppo-behaviour-cloning" / "seed0"
    assert (
        json.loads((run / "results.json").read_text())["module_stats"][-1]["behaviour-cloning"]["states"]
        == 100
    )
    clear = ["--method", "clear", "--method-arg", "budget=100", "unroll_length=8", "--logdir", str(tmp_path)]
    assert main(["run", "cartpole-flip", *clear, *TINY]) == 0
    results = json.loads((tmp_path / "cartpole-flip" / "ppo-clear" / "seed0" / "results.json").read_text())
    assert results["module_stats"][-1]["clear"]["steps"] == 96  # 12 segments of 8 of the budget's 100
    assert main(["run", "cartpole-physics", *clear, *TINY]) == 2
    assert "hides the task id" in capsys.readouterr().err


def test_interrupted_run_resumes_with_the_same_matrix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from clrl.runner import _Run

    full = ["run", "cartpole-flip", "--logdir", str(tmp_path / "full"), *TINY]
    assert main(full) == 0
    args = ["run", "cartpole-flip", "--logdir", str(tmp_path / "run"), *TINY]
    learn = _Run._learn

    def interrupted(self: _Run, i: int, reset_buffer: bool, bar: object) -> None:
        if i == 2:
            raise KeyboardInterrupt
        learn(self, i, reset_buffer, bar)

    with monkeypatch.context() as patch:
        patch.setattr(_Run, "_learn", interrupted)
        assert main(args) == 130
    assert "completed so far are in results.json" in capsys.readouterr().err
    assert main(args) == 2  # the interrupted run is kept: neither rerun nor overwritten silently
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert "resuming after task 2 of 4" in capsys.readouterr().out
    runs = [
        tmp_path / d / "cartpole-flip" / "ppo-finetune" / "seed0" / "results.json" for d in ("full", "run")
    ]
    matrices = [json.loads(r.read_text())["matrix"] for r in runs]
    assert matrices[0] == matrices[1]
    assert main([*args, "--resume"]) == 0
    assert "all 4 tasks were completed" in capsys.readouterr().out
    assert main([*args, "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_failed_task_exits_1_naming_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from clrl.runner import _Run

    def broken(self: _Run, i: int, reset_buffer: bool, bar: object) -> None:
        raise RuntimeError("simulator crashed")

    monkeypatch.setattr(_Run, "_learn", broken)
    assert main(["run", "cartpole-flip", "--logdir", str(tmp_path), *TINY]) == 1
    err = capsys.readouterr().err
    assert "task 'normal' (index 0) failed during training: RuntimeError: simulator crashed" in err
    assert "--resume" in err


def test_a_diverged_run_names_the_divergence_and_does_not_advise_resuming(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "run",
        "cartpole-flip",
        "--logdir",
        str(tmp_path),
        *TINY_RUN,
        "batch_size=32",
        "learning_rate=1e30",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert "became NaN or infinite while training task 'normal'" in err[0]
    assert "--resume would repeat it" in err[1]


def test_a_failure_with_a_long_message_is_one_line_that_advises_resuming(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from clrl.runner import _Run

    def failing(self: _Run, *args: object) -> None:
        raise ValueError("the environment's server went away\n" + "tensor([nan, nan])\n" * 60)

    monkeypatch.setattr(_Run, "_learn", failing)
    assert main(["run", "cartpole-flip", "--logdir", str(tmp_path), *TINY_RUN]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].endswith(
        "ValueError: the environment's server went away ...; the 0 task(s) completed before it are kept in "
        + repr(str(tmp_path / "cartpole-flip" / "ppo-finetune" / "seed0"))
    )
    assert "rerun the same command with --resume" in err[1]


BASE_INSTALL = """
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {"minigrid", "metaworld", "Box2D", "mujoco", "sb3_contrib", "ray", "rl_zoo3"}


class Missing(MetaPathFinder):  # as if only `pip install clrl` had run: the extras' packages are absent
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, Missing())
from clrl.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_list_and_an_extras_stream_on_the_base_install(tmp_path: Path) -> None:
    script = tmp_path / "base.py"
    script.write_text(BASE_INSTALL)
    listed = subprocess.run(
        [sys.executable, str(script), "list"], capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    minigrid = next(line for line in lines if line.strip().startswith("minigrid"))
    assert minigrid.endswith('[not installed: pip install "clrl[minigrid]"]')
    assert "not installed" not in next(line for line in lines if line.strip().startswith("cartpole-flip"))
    assert "algorithms:" in lines and "methods:" in lines
    streams = lines[1 : lines.index("algorithms:")]  # descriptions in one column, the long streams' too
    assert len({line.index("CartPole") for line in streams if "CartPole" in line}) == 1
    run = subprocess.run(
        [sys.executable, str(script), "run", "minigrid", "--logdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert (
        run.stderr.strip()
        == "clrl: error: stream 'minigrid' needs the minigrid extra: pip install \"clrl[minigrid]\""
    )


def test_progress_to_a_file_is_plain_lines(tmp_path: Path) -> None:
    out = subprocess.run(
        [*(sys.executable, "-m", "clrl.cli", "run", "cartpole-flip", "--logdir", str(tmp_path))]
        + [arg for arg in TINY_RUN if arg != "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("clrl: task ")]
    assert lines[0] == "clrl: task 1/4 normal: 0/256 steps (0%)"
    assert lines[-1].startswith("clrl: task 4/4 long-pole-flipped: 256/256 steps (100%)")


def test_plain_progress_lines_estimate_from_the_current_parts_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from clrl import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    file = io.StringIO()
    bar = progress.PlainProgress(100, "step", interval=0.0, file=file)
    bar.set_description("task 1/2 a")
    clock[0] = 100.0
    bar.update(20)  # a slow first task: 0.2 steps/s
    bar.set_description("task 2/2 b")
    clock[0] = 110.0
    bar.update(40)  # the second task's rate, 4 steps/s, is the estimate's: 40 steps left, 10 s
    assert file.getvalue().splitlines() == [
        "clrl: task 1/2 a: 0/100 steps (0%)",
        "clrl: task 1/2 a: 20/100 steps (20%), about 6:40 left",
        "clrl: task 2/2 b: 20/100 steps (20%)",
        "clrl: task 2/2 b: 60/100 steps (60%), about 0:10 left",
    ]


def test_demo_runs_finetuning_and_a_method_side_by_side_and_a_rerun_prints_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--steps", "256", "--logdir", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for method in ("finetune", "multihead"):
        results = json.loads(
            (tmp_path / "cartpole-flip" / f"ppo-{method}" / "seed0" / "results.json").read_text()
        )
        assert results["completed_tasks"] == 4 and results["steps"][-1] >= 4 * 256
        line = next(x for x in out.splitlines() if x.strip().startswith(method))
        kept = np.mean(results["matrix"][-1][:-1])
        assert f"{kept:.0f} of the" in line and f"forgetting {results['metrics']['forgetting']:.1f}" in line
    assert out.count("after \\ on") == 2
    before = (tmp_path / "cartpole-flip" / "ppo-multihead" / "seed0" / "results.json").read_bytes()
    assert main(args) == 0  # finished: shown again, nothing retrained
    assert "all 4 tasks were completed: nothing to train" in capsys.readouterr().out
    assert (tmp_path / "cartpole-flip" / "ppo-multihead" / "seed0" / "results.json").read_bytes() == before


def test_run_learns_a_stream_with_hidden_boundaries_in_one_learn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (clrl.streams.builtin_streams()["cartpole-drift"]).read_text(encoding="utf-8")
    path = tmp_path / "hidden-drift.toml"
    path.write_text(text.replace('name = "cartpole-drift"', 'name = "hidden-drift"\nboundaries = "hidden"'))
    logdir = tmp_path / "runs"
    args = ["run", str(path), "--method", "redo", "--logdir", str(logdir), *TINY_RUN]
    assert main(args) == 0
    saved = json.loads((logdir / "hidden-drift" / "ppo-redo" / "seed0" / "results.json").read_text())
    assert saved["completed_tasks"] == 4 and saved["config"]["schedule"] == "StreamCallback"
    assert main([*args, "--resume"]) == 0  # finished: returned as it is
    capsys.readouterr()
    assert main(["run", str(path), "--method", "ewc", "--logdir", str(logdir), *TINY_RUN]) == 2
    assert "EWC needs task boundaries" in capsys.readouterr().err
    scheduled = ["run", str(path), "--method", "online-ewc", "--logdir", str(logdir), *TINY_RUN]
    assert main(scheduled) == 2  # online EWC consolidates at task ends unless told every=K
    assert "online-ewc (every=K)" in capsys.readouterr().err
    assert main([*scheduled, "--method-arg", "every=64", "samples=32"]) == 0
    detected = ["run", str(path), "--method", "detector+ewc", "--logdir", str(logdir), *TINY_RUN]
    assert main([*detected, "--method-arg", "warmup=3", "samples=32"]) == 0
    saved = json.loads((logdir / "hidden-drift" / "ppo-detector+ewc" / "seed0" / "results.json").read_text())
    assert saved["config"]["modules"][0]["config"]["modules"][0]["class"] == "clrl.modules.ewc:EWC"
    capsys.readouterr()
    announced = ["run", "cartpole-flip", "--method", "detector+ewc", "--logdir", str(logdir), *TINY_RUN]
    assert main(announced) == 2
    assert "the detector finds boundaries a stream hides" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    """``clrl list | head -1``: the reader goes away; no error line, no traceback, status 141."""
    import subprocess
    import sys

    code = "import sys; from clrl.cli import main; sys.exit(main(['list']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before anything is read
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_the_summary_over_seeds_aligns_every_metric() -> None:
    from types import SimpleNamespace

    from clrl.cli import format_seeds

    runs = [
        SimpleNamespace(metrics={"acc": 1.0 + i, "forgetting_cw": 2.0, "online_performance": 30.0})
        for i in range(3)
    ]
    lines = format_seeds(runs).splitlines()[1:]  # type: ignore[arg-type]
    assert len(lines) == 3 and len({line.index("[") for line in lines}) == 1


def test_a_smoke_test_sweep_trains_each_stream_and_algorithms_first_run_and_checks_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLRL_SMOKE_TEST", "1")
    args = ["sweep", "--streams", "cartpole-flip", "cartpole-physics", "--methods", "finetune", "l2"]
    args += ["--seeds", "0", "1", "--logdir", str(tmp_path), "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "cartpole-flip / ppo / finetune / seed 0" in out
        and "cartpole-physics / ppo / finetune / seed 0" in out
    )
    assert "/ l2 /" not in out and "seed 1" not in out and "2 runs ->" in out
    # PackNet needs the task id that cartpole-physics hides: its runs are left out, yet refused.
    args[args.index("l2")] = "packnet"
    assert main(args) == 2
    assert "cartpole-physics" in capsys.readouterr().err


def test_the_smoke_test_variable_shrinks_a_run_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CLRL_SMOKE_TEST=1: 256 steps per task, one evaluation episode, no evaluations during training, the
    smallest seed only; unset (or 0), the command's own budget."""
    monkeypatch.setenv("CLRL_SMOKE_TEST", "1")
    args = ["run", "cartpole-flip", "--seeds", "3", "1", "--eval-freq", "100", "--eval-episodes", "7"]
    args += ["--logdir", str(tmp_path), "--no-progress", "--no-plasticity", "--hp", "n_envs=1", "n_steps=64"]
    assert main(args) == 0
    assert "CLRL_SMOKE_TEST is set: 256 steps per task" in capsys.readouterr().err
    (run,) = (tmp_path / "cartpole-flip" / "ppo-finetune").iterdir()
    assert run.name == "seed1"
    saved = json.loads((run / "results.json").read_text())
    assert saved["config"]["stream_spec"]["steps_per_task"] == 256 and saved["config"]["eval_episodes"] == 1
    assert saved["steps"] == [0, 256, 512, 768, 1024]  # no evaluation between task ends
    monkeypatch.setenv("CLRL_SMOKE_TEST", "0")
    assert main([*args, "--steps", "64", "--resume"]) == 2  # its own settings again: another run
    assert "other settings" in capsys.readouterr().err
