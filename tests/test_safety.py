"""Safe by default: names from files are data, never paths; one run per directory at a time."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICE, TINY_RUN, rewrite_zip

import clrl
from clrl import cli
from clrl.checks import RunLock, inside, prepare_logdir


@pytest.mark.parametrize("name", ["/abs/path", "../../../x", "..", ".", "a/b", "a\0b", "x" * 101, ""])
def test_a_stream_or_task_name_that_is_not_one_plain_path_component_is_refused(name: str) -> None:
    with pytest.raises(clrl.StreamError, match="stream name"):
        clrl.TaskStream(name, [clrl.Task("a", "CartPole-v1")])
    with pytest.raises(clrl.StreamError, match="task name"):
        clrl.TaskStream("s", [clrl.Task(name, "CartPole-v1")])


def test_a_stream_file_naming_a_path_writes_nothing_outside_the_logdir(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    stream = tmp_path / "evil.toml"
    stream.write_text('name = "../outside"\n[[tasks]]\nname = "a"\nenv_id = "CartPole-v1"\n')
    logdir = tmp_path / "runs"
    argv = ["run", str(stream), "--steps", "64", "--logdir", str(logdir), "--overwrite", "--no-progress"]
    assert cli.main(argv) == 2
    assert (outside / "keep.txt").read_text() == "mine" and sorted(p.name for p in outside.iterdir()) == [
        "keep.txt"
    ]
    assert not logdir.exists() or not any(logdir.rglob("*.json"))


def test_paths_made_from_names_stay_inside_the_run_directory(tmp_path: Path) -> None:
    assert inside(tmp_path, "checkpoints", "task01-a.zip") == tmp_path / "checkpoints" / "task01-a.zip"
    with pytest.raises(clrl.ConfigError, match="outside the run directory"):
        inside(tmp_path, "..", "x")


def test_a_second_run_in_a_directory_in_use_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    root, lock = prepare_logdir(tmp_path / "run", overwrite=False)
    assert root is not None and lock is not None
    with pytest.raises(clrl.RunExistsError, match=f"in use by another clrl process \\(PID {os.getpid()}\\)"):
        prepare_logdir(tmp_path / "run", overwrite=True)
    with pytest.raises(clrl.RunExistsError, match="in use"):
        prepare_logdir(tmp_path / "run", overwrite=False, resume=True)
    lock.release()
    root, again = prepare_logdir(tmp_path / "run", overwrite=False)  # free again: nothing else is there
    assert again is not None
    again.release()


def test_the_lock_of_a_killed_run_is_gone_with_its_process(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from clrl.checks import RunLock; "
        "lock = RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(clrl.RunExistsError, match=f"PID {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait()
    RunLock(tmp_path).acquire().release()  # the OS released it with the process


def test_a_run_releases_its_directory_when_it_ends_or_fails(tmp_path: Path) -> None:
    stream = clrl.TaskStream("s", [clrl.Task("a", "CartPole-v1")], steps_per_task=64)
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE)
    clrl.train(model, stream, logdir=tmp_path / "run", eval_episodes=1)
    with pytest.raises(clrl.RunExistsError, match="already holds a run"):  # not "in use": it was released
        clrl.train(model, stream, logdir=tmp_path / "run", eval_episodes=1)
    assert not (tmp_path / "run" / ".clrl.pid").exists()
    clrl.train(model, stream, logdir=tmp_path / "run", eval_episodes=1, overwrite=True)
    assert (tmp_path / "run" / "results.json").is_file()


# ------------------------------------------------------------------ imports only on consent
@pytest.fixture
def fresh_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clrl.imports, "_allowed", set())
    monkeypatch.delenv(clrl.imports.ENVIRONMENT_VARIABLE, raising=False)


def stream_file(folder: Path, env_id: str = "CartPole-v1", wrapper: str | None = None) -> Path:
    path = folder / "s.toml"
    wrappers = f'wrappers = [{{ name = "{wrapper}" }}]\n' if wrapper else ""
    path.write_text(f'name = "s"\n[[tasks]]\nname = "a"\nenv_id = "{env_id}"\n{wrappers}')
    return path


@pytest.mark.usefixtures("fresh_allow_list")
def test_a_stream_file_cannot_make_clrl_import_a_module_it_was_not_allowed(tmp_path: Path) -> None:
    sys.modules.pop("this", None)
    with pytest.raises(clrl.StreamError, match=r"module 'this' is not allowed.*--allow-import this"):
        clrl.make_stream(stream_file(tmp_path, env_id="this:CartPole-v1"))
    assert "this" not in sys.modules


@pytest.mark.usefixtures("fresh_allow_list")
def test_the_working_directory_is_never_searched_for_a_named_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "evilwrap.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")  # as `python -m clrl.cli` puts the working directory first
    with pytest.raises(clrl.StreamError, match="not allowed"):
        clrl.make_stream(stream_file(tmp_path, wrapper="evilwrap:Wrapper"))
    clrl.allow_imports("evilwrap")
    with pytest.raises(clrl.StreamError, match="cannot import 'evilwrap'"):
        clrl.make_stream(stream_file(tmp_path, wrapper="evilwrap:Wrapper"))
    assert not marker.exists()


@pytest.mark.usefixtures("fresh_allow_list")
def test_an_allowed_package_of_wrappers_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "mywrappers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import gymnasium as gym\nclass Same(gym.Wrapper):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(clrl.StreamError, match="not allowed"):
        clrl.make_stream(stream_file(tmp_path, wrapper="mywrappers:Same"))
    monkeypatch.setenv(clrl.imports.ENVIRONMENT_VARIABLE, "mywrappers")  # what --allow-import passes on
    stream = clrl.make_stream(stream_file(tmp_path, wrapper="mywrappers:Same"))
    assert type(stream.make_env(0)).__name__ == "Same"


@pytest.mark.usefixtures("fresh_allow_list")
def test_a_checkpoint_naming_a_module_not_allowed_is_refused_unimported(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    stream = clrl.TaskStream("s", [clrl.Task("a", "CartPole-v1")], steps_per_task=64)
    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE)
    path = clrl.save(model, tmp_path / "m", [clrl.L2()])

    def naming(qualname: str, config: dict) -> Path:
        payload = clrl.checkpoint.read_payload(path)
        payload["modules"][0].update({"class": qualname, "config": config})
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return rewrite_zip(path, tmp_path / "evil.zip", {clrl.checkpoint.ENTRY: buffer.getvalue()})

    sys.modules.pop("this", None)
    with pytest.raises(clrl.CheckpointError, match="module 'this' is not allowed"):
        clrl.load(naming("this:L2", {}))
    assert "this" not in sys.modules
    marker = tmp_path / "ran"
    popen = {"args": ["touch", str(marker)]}  # an imported module's class, any arguments: never built
    with pytest.raises(clrl.CheckpointError, match="not a ContinualModule class"):
        clrl.load(naming("subprocess:Popen", popen))
    assert not marker.exists()


# ------------------------------------------------------------------ one-line errors
def test_a_logdir_or_report_folder_that_is_a_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cli.main(["run", "cartpole-flip", "--steps", "64", "--logdir", str(a_file), "--no-progress"]) == 2
    run_dir = a_file / "cartpole-flip" / "ppo-finetune" / "seed0"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"clrl: error: cannot create run directory '{run_dir}': Not a directory"
    ]
    runs = tmp_path / "runs"
    stream = clrl.TaskStream("s", [clrl.Task("a", "CartPole-v1")], steps_per_task=64)
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE)
    clrl.train(model, stream, logdir=runs / "s" / "ppo-finetune" / "seed0", eval_episodes=1)
    assert cli.main(["report", str(runs), "--out", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"clrl: error: report folder '{a_file}' is a file, not a folder"


def test_a_full_disk_is_one_line_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def full(path: Path, data: object) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(clrl.results, "write_json_atomic", full)
    argv = ["run", "cartpole-flip", "--steps", "64", "--eval-episodes", "1", "--logdir", str(tmp_path)]
    assert cli.main([*argv, "--no-progress"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("clrl: error: No space left on device: '") and "results.json" in line


def test_results_json_gets_the_mode_of_any_other_file_and_a_resume_sweeps_temporary_files(
    tmp_path: Path,
) -> None:
    from stable_baselines3 import PPO

    stream = clrl.TaskStream(
        "s", [clrl.Task("a", "CartPole-v1"), clrl.Task("b", "CartPole-v1")], steps_per_task=64
    )
    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE)
    run = tmp_path / "run"
    clrl.train(model, stream, logdir=run, eval_episodes=1)
    other = tmp_path / "other"
    other.write_text("x")
    assert (run / "results.json").stat().st_mode & 0o777 == other.stat().st_mode & 0o777
    left = [run / ".results.json.abc.tmp", run / "checkpoints" / ".task02-b.123.tmp.zip"]
    for path in left:  # what a SIGKILL between write and rename leaves
        path.write_text("partial")
    clrl.train(model, stream, logdir=run, eval_episodes=1, resume=True)
    assert not any(path.exists() for path in left)


def test_a_resume_under_another_thread_count_is_recorded(tmp_path: Path) -> None:
    import json

    from stable_baselines3 import PPO

    tasks = [clrl.Task("a", "CartPole-v1"), clrl.Task("b", "CartPole-v1")]
    stream = clrl.TaskStream("s", tasks, steps_per_task=64)

    def model() -> PPO:
        return PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, batch_size=32, device=DEVICE, seed=0)

    run = tmp_path / "run"
    clrl.train(model(), stream, logdir=run, eval_episodes=1)
    results = json.loads((run / "results.json").read_text())
    results["completed_tasks"] = 1  # as if killed during the second task
    (run / "results.json").write_text(json.dumps(results))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        resumed = clrl.train(model(), stream, logdir=run, eval_episodes=1, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert resumed.config["torch_threads"] == threads and resumed.config["resumed_torch_threads"] == [2]


def test_two_runs_launched_at_once_on_one_directory_never_mix(tmp_path: Path) -> None:
    """Two `clrl run`s with different settings, started together on one run directory: one trains, the
    other stops with one line (the lock's holder, or the finished run it must not overwrite), and the
    results are wholly the winner's."""
    command = [sys.executable, "-m", "clrl.cli", "run", "cartpole-flip"]
    for trial in range(2):
        logdir = tmp_path / f"trial{trial}"
        launches = [
            subprocess.Popen(
                [*command, "--logdir", str(logdir), *TINY_RUN, "batch_size=32", f"learning_rate={rate}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rate in (0.001, 0.002)
        ]
        outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in launches]
        codes = sorted(code for code, _ in outcomes)
        assert codes == [0, 2], outcomes
        winner = 0.001 if outcomes[0][0] == 0 else 0.002
        loser = next(err for code, err in outcomes if code == 2)
        assert "in use by another clrl process" in loser or "already holds a run" in loser, loser
        assert len(loser.strip().splitlines()) == 1
        (results,) = logdir.rglob("results.json")
        saved = json.loads(results.read_text())
        assert saved["config"]["hyperparameters"]["learning_rate"] == winner
        assert saved["completed_tasks"] == len(saved["task_names"])
