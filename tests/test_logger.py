"""TensorBoard output read back from the event files, and results.json writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICE, cartpole_stream, tiny_ppo
from stable_baselines3 import PPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import clrl
from clrl.logger import matrix_markdown, render_matrix, write_json_atomic


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, clrl.TrainResult]:
    stream = cartpole_stream()
    model = tiny_ppo(stream)
    logdir = tmp_path_factory.mktemp("tb") / "run"
    result = clrl.train(model, stream, [clrl.L2()], logdir=logdir, eval_episodes=1, eval_freq=64)
    return logdir, result


def load_events(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_one_event_file_holds_sb3_and_clrl_scalars(run_dir: tuple[Path, clrl.TrainResult]) -> None:
    logdir, _ = run_dir
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    tags = set(load_events(logdir).Tags()["scalars"])
    assert {
        "eval/normal/return",
        "eval/flipped/return",
        "cl/acc",
        "cl/bwt",
        "cl/fwt",
        "cl/forgetting",
        "cl/task",
    } <= tags
    assert {"train/loss", "rollout/ep_rew_mean"} <= tags  # SB3's own
    assert {"cl/l2/penalty", "cl/l2/distance"} <= tags  # the module's


def test_sb3_scalars_continue_on_one_step_axis(run_dir: tuple[Path, clrl.TrainResult]) -> None:
    logdir, _ = run_dir
    steps = [e.step for e in load_events(logdir).Scalars("train/loss")]
    assert steps == sorted(steps) and steps[-1] > 128  # the second task continues after the first


def test_eval_scalars_match_the_matrix_and_curves(run_dir: tuple[Path, clrl.TrainResult]) -> None:
    logdir, result = run_dir
    events = load_events(logdir).Scalars("eval/flipped/return")
    by_step = {e.step: e.value for e in events}
    assert by_step[0] == pytest.approx(result.matrix[0, 1])
    assert by_step[256] == pytest.approx(result.matrix[2, 1])
    for step, _, row in result.curves:
        assert by_step[step] == pytest.approx(row[1])
    acc = load_events(logdir).Scalars("cl/acc")
    assert acc[-1].value == pytest.approx(result.metrics["acc"])


def test_return_matrix_image_and_text(run_dir: tuple[Path, clrl.TrainResult]) -> None:
    logdir, _ = run_dir
    events = load_events(logdir)
    images = events.Images("cl/return_matrix")
    assert len(images) == 2 and images[-1].width > 0
    texts = events.Tensors("cl/return_matrix/text_summary")
    assert b"| untrained |" in texts[-1].tensor_proto.string_val[0]


def test_hparams_are_written(run_dir: tuple[Path, clrl.TrainResult]) -> None:
    logdir, _ = run_dir
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = load_events(logdir).PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["method"].string_value == "l2"
    assert hparams["L2/strength"].number_value == 1.0
    # No run writes the experiment: TensorBoard builds it from every run's session (their union of keys).
    assert "_hparams_/experiment" not in content and "_hparams_/session_end_info" in content


def test_model_gets_its_logger_back(run_dir: tuple[Path, clrl.TrainResult]) -> None:
    stream = cartpole_stream()
    model = PPO("MlpPolicy", stream.make_vec_env(0), n_steps=32, device=DEVICE)
    clrl.train(model, stream, logdir=run_dir[0].parent / "again", eval_episodes=1, checkpoints=False)
    model.learn(32)  # would fail on a closed TensorBoard writer


def test_render_matrix_marks_missing_cells() -> None:
    matrix = np.array([[1.0, 2.0], [3.0, np.nan], [np.nan, np.nan]])
    image = render_matrix(matrix)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert "| untrained | 1.0 | 2.0 |" in matrix_markdown(matrix, ["a", "b"])
    assert "| a | 3.0 |  |" in matrix_markdown(matrix, ["a", "b"])


def test_json_is_written_atomically_with_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json_atomic(path, {"m": np.array([1.0, np.nan]), "x": np.float32(2)})
    assert json.loads(path.read_text()) == {"m": [1.0, None], "x": 2.0}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"m": [1.0, None], "x": 2.0}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_boundary_evaluations_and_metrics_are_also_logged_by_task_and_laid_out(
    run_dir: tuple[Path, clrl.TrainResult],
) -> None:
    logdir, result = run_dir
    events = load_events(logdir)
    for j, name in enumerate(result.task_names):
        points = events.Scalars(f"by_task/eval/{name}/return")
        assert [p.step for p in points] == [0, 1, 2]  # untrained, after task 1, after task 2
        np.testing.assert_allclose([p.value for p in points], result.matrix[:, j], rtol=1e-6)
    assert [p.step for p in events.Scalars("by_task/cl/acc")] == [1, 2]
    assert events.Scalars("by_task/cl/acc")[-1].value == pytest.approx(result.metrics["acc"], rel=1e-6)
    from tensorboard.plugins.custom_scalar import layout_pb2

    (layout,) = [
        layout_pb2.Layout.FromString(events.Tensors(tag)[0].tensor_proto.string_val[0])
        for tag in events.Tags()["tensors"]
        if tag == "custom_scalars__config__"
    ]
    charts = {
        (category.title, chart.title): list(chart.multiline.tag)
        for category in layout.category
        for chart in category.chart
    }
    assert charts[("evaluation (return) per task", "normal")] == ["^eval/normal/return$"]
    assert charts[("evaluation after each task", "flipped")] == ["^by_task/eval/flipped/return$"]
    assert charts[("continual metrics", "forgetting")] == ["^cl/forgetting$"]
