"""Sweeps: grids, sweep files, the process pool and Ray backends, skipping, resuming and failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import clrl
from clrl import ConfigError, RunSpec, grid, load_sweep, sweep
from clrl.cli import main
from clrl.experiment import run_experiment

# Tiny PPO runs: 4 CartPole tasks of 128 steps, one update each.
TINY = dict(steps=128, eval_episodes=1, hyperparameters={"n_steps": 32, "batch_size": 64})


def tiny(method: str = "finetune", seed: int = 0, **changes: object) -> RunSpec:
    return RunSpec(**{"stream": "cartpole-flip", "method": method, "seed": seed, **TINY, **changes})  # type: ignore[arg-type]


def matrix(run_dir: Path) -> np.ndarray:
    return np.array(json.loads((run_dir / "results.json").read_text())["matrix"])


def test_grid_expands_every_combination_single_task_first() -> None:
    runs = grid(
        ["cartpole-flip", "cartpole-physics"],
        ["ppo", "A2C"],
        ["ewc", "single-task"],
        [0, 1],
        hyperparameters={"ppo": {"n_steps": 64}},
        method_args={"ewc": {"strength": 5.0}},
    )
    assert len(runs) == 16
    assert {r.method for r in runs[:8]} == {"single-task"}
    assert {(r.stream, r.algo, r.method, r.seed) for r in runs} == {
        (s, a, m, seed)
        for s in ("cartpole-flip", "cartpole-physics")
        for a in ("ppo", "a2c")
        for m in ("ewc", "single-task")
        for seed in (0, 1)
    }
    for r in runs:
        assert r.hyperparameters == ({"n_steps": 64} if r.algo == "ppo" else {})
        assert r.method_args == ({"strength": 5.0} if r.method == "ewc" else {})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(streams=[]), "streams must be a non-empty list"),
        (dict(seeds="0"), "seeds must be a non-empty list"),
        (dict(hyperparameters={"sac": {}}), "hyperparameters for sac"),
        (dict(method_args={"mas": {}}), "method_args for mas"),
    ],
)
def test_grid_rejects_bad_axes(kwargs: dict[str, object], message: str) -> None:
    axes: dict[str, object] = dict(streams=["cartpole-flip"], algos=["ppo"], methods=["ewc"], seeds=[0])
    with pytest.raises(ConfigError, match=message):
        grid(**{**axes, **kwargs})  # type: ignore[arg-type]


def test_sweep_file_defaults_grids_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(
        """
logdir = "runs/ref"
seeds = [0, 1]
steps = 256

[[grid]]
streams = ["cartpole-flip"]
algos = ["ppo"]
methods = ["finetune", "ewc"]

[[grid]]
streams = ["pendulum-flip"]
algos = ["sac"]
methods = ["replay"]
seeds = [3]

[hyperparameters.sac]
learning_starts = 10

[method_args.ewc]
strength = 7.0
"""
    )
    runs, settings = load_sweep(path)
    assert settings == {"logdir": "runs/ref"}
    assert [(r.stream, r.algo, r.method, r.seed) for r in runs] == [
        ("cartpole-flip", "ppo", "finetune", 0),
        ("cartpole-flip", "ppo", "finetune", 1),
        ("cartpole-flip", "ppo", "ewc", 0),
        ("cartpole-flip", "ppo", "ewc", 1),
        ("pendulum-flip", "sac", "replay", 3),
    ]
    assert all(r.steps == 256 for r in runs)
    assert runs[2].method_args == {"strength": 7.0} and runs[0].method_args == {}
    assert runs[4].hyperparameters == {"learning_starts": 10} and runs[0].hyperparameters == {}
    overridden, _ = load_sweep(path, overrides={"seeds": [5], "steps": 64})
    assert {(r.seed, r.steps) for r in overridden} == {(5, 64)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("streams = [", "not valid TOML"),
        ("colour = 1", "unknown key"),
        ('streams = ["cartpole-flip"]\nalgos = ["ppo"]\nmethods = ["ewc"]', "has no seeds"),
        (
            'seeds = [0]\n[[grid]]\nstreams = ["cartpole-flip"]\nalgos = ["ppo"]\nmethods = ["x"]\nsize = 1',
            "unknown key",
        ),
    ],
)
def test_bad_sweep_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


BASE = 'streams = ["cartpole-flip"]\nalgos = ["ppo"]\nmethods = ["finetune"]\nseeds = [0]\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('eval_freq = "often"', "eval_freq must be a positive number of steps or None, got 'often'"),
        ("eval_episodes = 0", "eval_episodes must be a positive integer, got 0"),
        ("device = 5", "device must be a string, got 5"),
        ('device = "gpu7"', "device 'gpu7' is not a torch device"),
        ('steps = "many"', "steps must be an integer or None"),
        ("steps = 100000000000000000", "steps_per_task must be an integer in"),
        ("[hyperparameters.ppo]\ngamma = 2.0", "hyperparameter gamma must be a discount in"),
        ("[hyperparameters.ppo]\nlearning_rate = nan", "learning_rate must be a finite number"),
    ],
)
def test_every_field_of_a_sweep_file_is_checked_before_any_run_starts(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(BASE + text)
    runs, _ = load_sweep(path)
    with pytest.raises((ConfigError, clrl.StreamError), match=message):
        sweep(runs, tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("logdir = 5", "logdir must be a string, got 5"),
        (
            'streams = [5]\nalgos = ["ppo"]\nmethods = ["finetune"]\nseeds = [0]',
            "streams must be a list of names",
        ),
        (
            BASE + "[hyperparameters.sac]\nlearning_starts = 10",
            r"\[hyperparameters\] for sac, which no grid runs",
        ),
        (BASE + "[method_args.ewc]\nstrength = 1.0", r"\[method_args\] for ewc, which no grid runs"),
        (BASE + "hyperparameters = 5", "hyperparameters must be tables"),
    ],
)
def test_a_sweep_file_field_of_the_wrong_type_or_an_unused_table_is_refused_when_read(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(text if "streams" in text else BASE + text)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_narrowing_a_sweep_from_the_command_line_keeps_the_files_other_tables(tmp_path: Path) -> None:
    # The file's [method_args.ewc] and [hyperparameters.sac] are for runs --methods/--algos leave out.
    path = tmp_path / "sweep.toml"
    path.write_text(
        'streams = ["cartpole-flip"]\nalgos = ["ppo", "sac"]\nmethods = ["finetune", "ewc"]\nseeds = [0]\n'
        "[method_args.ewc]\nstrength = 1.0\n[hyperparameters.sac]\nlearning_starts = 10\n"
    )
    runs, _ = load_sweep(path, {"methods": ["finetune"], "algos": ["ppo"]})
    assert [(r.algo, r.method) for r in runs] == [("ppo", "finetune")]
    assert runs[0].hyperparameters == {} and runs[0].method_args == {}
    # A table for what neither the file nor the command line runs is still a mistake.
    path.write_text(path.read_text() + "[method_args.l2]\nstrength = 1.0\n")
    with pytest.raises(ConfigError, match=r"\[method_args\] for l2, which no grid runs"):
        load_sweep(path, {"methods": ["finetune"]})


def test_names_given_with_a_file_of_several_grids_pick_among_each_grids(tmp_path: Path) -> None:
    # Replacing every table's methods would run CPG on a stream that hides the task id (the reference
    # sweep's cartpole-physics grid) and on algorithms the file never pairs with the stream.
    path = tmp_path / "sweep.toml"
    path.write_text(
        'seeds = [0]\n[[grid]]\nstreams = ["cartpole-flip"]\nalgos = ["ppo"]\nmethods = ["finetune", "cpg"]\n'
        '[[grid]]\nstreams = ["cartpole-physics"]\nalgos = ["PPO"]\nmethods = ["finetune", "ewc"]\n'
        '[[grid]]\nstreams = ["pendulum-flip"]\nalgos = ["sac"]\nmethods = ["cpg"]\n'
        "[method_args.ewc]\nstrength = 1.0\n[hyperparameters.sac]\nlearning_starts = 10\n"
    )
    runs, _ = load_sweep(path, {"methods": ["cpg"]})
    assert [(r.stream, r.algo, r.method) for r in runs] == [
        ("cartpole-flip", "ppo", "cpg"),
        ("pendulum-flip", "sac", "cpg"),
    ]
    runs, _ = load_sweep(path, {"methods": ["finetune"], "algos": ["ppo"], "seeds": [4]})
    assert [(r.stream, r.method, r.seed) for r in runs] == [
        ("cartpole-flip", "finetune", 4),
        ("cartpole-physics", "finetune", 4),
    ]
    with pytest.raises(ConfigError, match=r"methods given with sweep file .* must be a list of names"):
        load_sweep(path, {"methods": "cpg"})
    with pytest.raises(ConfigError, match="none lists methods mas: given with such a file"):
        load_sweep(path, {"methods": ["cpg", "mas"]})
    with pytest.raises(ConfigError, match="none lists streams cartpole-physics"):  # not with cpg
        load_sweep(path, {"methods": ["cpg"], "streams": ["cartpole-physics"]})
    one = tmp_path / "one.toml"  # a file of one grid: the command line replaces its names, as before
    one.write_text('streams = ["cartpole-flip"]\nalgos = ["ppo"]\nmethods = ["finetune"]\nseeds = [0]\n')
    runs, _ = load_sweep(one, {"methods": ["mas"]})
    assert [r.method for r in runs] == ["mas"]


def test_bad_runs_fail_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown method"):
        sweep([tiny(), tiny(method="ewk")], tmp_path, progress=False)
    with pytest.raises(ConfigError, match="two runs of the sweep write to"):
        sweep([tiny(), tiny(method_args={})], tmp_path, progress=False)
    with pytest.raises(ConfigError, match="workers"):
        sweep([tiny()], tmp_path, workers=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_process_pool_runs_equal_runs_by_hand_and_relaunch_skips(tmp_path: Path) -> None:
    runs = [tiny("finetune", 0), tiny("finetune", 1), tiny("l2", 0), tiny("l2", 1)]
    lines: list[str] = []
    result = sweep(runs, tmp_path / "sweep", workers=2, progress=False, log=lines.append)
    assert [o.status for o in result.outcomes] == ["done"] * 4, [o.error for o in result.outcomes]
    assert len(lines) == 4 and all(line.startswith("done") for line in lines)
    # A run of the sweep is the same as the same run by hand (same seed, same matrix).
    by_hand = run_experiment(runs[2], tmp_path / "hand", log=lambda _: None)
    np.testing.assert_array_equal(matrix(result.outcomes[2].run_dir), by_hand.matrix)
    assert result.outcomes[2].run_dir == tmp_path.resolve() / "sweep" / "cartpole-flip" / "ppo-l2" / "seed0"
    log_text = (result.outcomes[2].run_dir / "sweep.log").read_text()
    assert log_text.count("clrl: finished") == 1
    assert "RuntimeWarning" not in log_text  # the worker module is not imported before it runs

    stamps = [(o.run_dir / "results.json").stat().st_mtime_ns for o in result.outcomes]
    again = sweep(runs, tmp_path / "sweep", workers=2, progress=False, log=lines.append)
    assert [o.status for o in again.outcomes] == ["skipped"] * 4
    assert [(o.run_dir / "results.json").stat().st_mtime_ns for o in again.outcomes] == stamps


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    bad = tiny(seed=1, hyperparameters={"n_stepz": 3})  # a name only SB3's constructor refuses, in the run
    result = sweep([tiny(seed=0), bad, tiny(seed=2)], tmp_path, workers=2, progress=False, log=lambda _: None)
    assert [o.status for o in result.outcomes] == ["done", "failed", "done"]
    assert "n_stepz" in (result.outcomes[1].error or "")
    assert result.count("failed") == 1 and result.failed[0].spec == bad
    # A finished directory with other settings is not touched: it fails without starting.
    other = tiny(seed=0, eval_episodes=2)
    clash = sweep([other], tmp_path, progress=False, log=lambda _: None)
    assert clash.outcomes[0].status == "failed" and "other settings" in (clash.outcomes[0].error or "")
    # --overwrite replaces it.
    replaced = sweep([other], tmp_path, overwrite=True, progress=False, log=lambda _: None)
    assert replaced.outcomes[0].status == "done"


def test_killed_sweep_resumes_half_finished_runs(tmp_path: Path) -> None:
    """A sweep killed while its runs are between tasks continues them, and ends with the same matrices."""
    args = [
        "--streams",
        "cartpole-flip",
        "--methods",
        "l2",
        "--seeds",
        "0",
        "1",
        "--steps",
        "2048",
        "--eval-episodes",
        "1",
        "--hp",
        "n_steps=256",
        "--no-progress",
        "--workers",
        "2",
    ]
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "clrl.cli", "sweep", *args, "--logdir", str(killed)]
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    runs = [killed / "cartpole-flip" / "ppo-l2" / f"seed{s}" for s in (0, 1)]
    deadline = time.monotonic() + 240
    done: list[int | None] = [None, None]
    while time.monotonic() < deadline and process.poll() is None:
        done = [_completed(run) for run in runs]
        if any(d is not None and 1 <= d < 4 for d in done):
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert any(d is not None and 1 <= d < 4 for d in done), f"no run caught between tasks: {done}"

    assert main(["sweep", *args, "--logdir", str(killed)]) == 0
    assert main(["sweep", *args, "--logdir", str(tmp_path / "whole")]) == 0
    for seed, run in enumerate(runs):
        assert _completed(run) == 4
        whole = tmp_path / "whole" / "cartpole-flip" / "ppo-l2" / f"seed{seed}"
        np.testing.assert_array_equal(matrix(run), matrix(whole))


def _completed(run: Path) -> int | None:
    try:
        return int(json.loads((run / "results.json").read_text())["completed_tasks"])
    except (OSError, ValueError, KeyError):
        return None


def test_ray_backend_on_a_local_instance_gives_the_process_pool_results(tmp_path: Path) -> None:
    runs = [tiny("finetune", 0), tiny("ewc", 0, method_args={"samples": 32})]
    pool = sweep(runs, tmp_path / "pool", workers=2, progress=False, log=lambda _: None)
    ray = sweep(runs, tmp_path / "ray", backend="ray", workers=2, progress=False, log=lambda _: None)
    assert [o.status for o in ray.outcomes] == ["done", "done"], [o.error for o in ray.outcomes]
    for a, b in zip(pool.outcomes, ray.outcomes, strict=True):
        np.testing.assert_array_equal(matrix(a.run_dir), matrix(b.run_dir))
    again = sweep(runs, tmp_path / "ray", backend="ray", workers=2, progress=False, log=lambda _: None)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]


def test_cli_sweep_dry_run_report_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [
        "--streams",
        "cartpole-flip",
        "--steps",
        "128",
        "--eval-episodes",
        "1",
        "--no-progress",
        "--hp",
        "n_steps=32",
        "batch_size=64",
        "--logdir",
        str(tmp_path),
    ]
    assert main(["sweep", *common, "--methods", "finetune", "single-task", "l2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cartpole-flip / ppo / single-task / seed 0" in out.splitlines()[0] and "3 runs" in out
    assert not any(tmp_path.iterdir())
    assert (
        main(["sweep", *common, "--methods", "finetune", "l2", "--method-arg", "strength=3", "--report"]) == 0
    )
    spec = json.loads((tmp_path / "cartpole-flip" / "ppo-l2" / "seed0" / "spec.json").read_text())
    assert spec["method_args"] == {"strength": 3}
    assert (tmp_path / "report" / "report.md").is_file()
    assert main(["sweep", *common, "--methods", "finetune", "--method-arg", "strength=3"]) == 2
    assert "no method of the sweep takes" in capsys.readouterr().err
    assert main(["sweep", *common, "--methods", "finetune", "--hp", "n_steps=0", "--seeds", "4"]) == 2
    assert "n_steps must be a positive integer, got 0" in capsys.readouterr().err  # up front: nothing ran
    assert not (tmp_path / "cartpole-flip" / "ppo-finetune" / "seed4").exists()
    assert main(["sweep", *common, "--methods", "finetune", "--hp", "n_stepz=3", "--seeds", "4"]) == 1
    assert "failed" in capsys.readouterr().out


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def test_an_interrupt_while_a_run_starts_stops_that_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Popen waits for its child's exec: a signal arriving then must not leave the child running unknown."""
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        process = real_popen(*args, **kwargs)  # type: ignore[call-overload]
        started.append(process)
        signal.raise_signal(signal.SIGTERM)  # before Popen returns, as when it comes during the exec wait
        return process

    monkeypatch.setattr(subprocess, "Popen", popen)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep([tiny()], tmp_path, workers=1, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(started) == 1
    assert started[0].poll() is not None  # stopped by the sweep, not orphaned


def test_terminated_sweep_stops_its_runs(tmp_path: Path) -> None:
    logdir = tmp_path / "terminated"
    command = [
        sys.executable,
        "-m",
        "clrl.cli",
        "sweep",
        "--streams",
        "cartpole-flip",
        "--seeds",
        "0",
        "1",
        "--steps",
        "50000",
        "--no-progress",
        "--workers",
        "2",
        "--logdir",
        str(logdir),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_processes_mentioning(str(logdir))) < 3:  # driver + 2 runs
        time.sleep(0.1)
    assert len(_processes_mentioning(str(logdir))) == 3
    process.send_signal(signal.SIGTERM)  # the driver only, as a scheduler or `kill` does
    assert process.wait(timeout=60) == 130
    assert b"interrupted" in process.stderr.read()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _processes_mentioning(str(logdir)):
        time.sleep(0.1)
    assert _processes_mentioning(str(logdir)) == []


def test_a_sigkilled_sweep_driver_takes_its_runs_with_it(tmp_path: Path) -> None:
    logdir = tmp_path / "killed"
    command = [sys.executable, "-m", "clrl.cli", "sweep", "--streams", "cartpole-flip", "--seeds", "0", "1"]
    command += ["--steps", "50000", "--no-progress", "--workers", "2", "--logdir", str(logdir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_processes_mentioning(str(logdir))) < 3:  # driver + 2 runs
        time.sleep(0.1)
    assert len(_processes_mentioning(str(logdir))) == 3
    process.kill()  # SIGKILL: the driver cannot stop its runs itself
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _processes_mentioning(str(logdir)):
        time.sleep(0.1)
    assert _processes_mentioning(str(logdir)) == []  # the parent-death signal ended them


def test_a_stream_with_hidden_boundaries_keeps_the_sweeps_record_and_log_and_relaunch_skips(
    tmp_path: Path,
) -> None:
    """Such a run starts over when half-finished, but the sweep's spec.json and sweep.log, written before
    it starts, are not the run's to remove (they were, so a relaunch could not recognise the finished run
    and a failure's log was gone)."""
    text = clrl.streams.builtin_streams()["cartpole-drift"].read_text(encoding="utf-8")
    path = tmp_path / "hidden.toml"
    path.write_text(text.replace('name = "cartpole-drift"', 'name = "hidden"\nboundaries = "hidden"'))
    runs = [tiny(stream=str(path), steps=64)]
    result = sweep(runs, tmp_path / "sweep", workers=1, progress=False, log=lambda _: None)
    assert [o.status for o in result.outcomes] == ["done"], [o.error for o in result.outcomes]
    run_dir = result.outcomes[0].run_dir
    assert (run_dir / "spec.json").is_file() and "clrl:" in (run_dir / "sweep.log").read_text()
    again = sweep(runs, tmp_path / "sweep", workers=1, progress=False, log=lambda _: None)
    assert [o.status for o in again.outcomes] == ["skipped"]
