"""Metrics against hand-computed return matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clrl import metrics

# Three tasks. Row 0 untrained, row i after training task i.
R = np.array(
    [
        [10.0, 20.0, 30.0],
        [100.0, 40.0, 35.0],
        [60.0, 200.0, 50.0],
        [80.0, 150.0, 300.0],
    ]
)


def test_average_return_is_the_mean_of_the_last_row() -> None:
    assert metrics.average_return(R) == pytest.approx((80 + 150 + 300) / 3)


def test_backward_transfer_by_hand() -> None:
    # task 0: 80 - 100 = -20; task 1: 150 - 200 = -50
    assert metrics.backward_transfer(R) == pytest.approx(-35.0)


def test_forward_transfer_by_hand() -> None:
    # task 1 before training it (row 1): 40 - 20 = 20; task 2 (row 2): 50 - 30 = 20
    assert metrics.forward_transfer(R) == pytest.approx(20.0)


def test_forgetting_by_hand() -> None:
    # task 0: max(100, 60) - 80 = 20; task 1: max(40, 200) - 150 = 50
    assert metrics.forgetting(R) == pytest.approx(35.0)


def test_forgetting_is_negative_when_a_task_improves_later() -> None:
    # Chaudhry et al.'s definition is not clipped at zero: max(5) - 7 = -2.
    r = np.array([[0.0, 0.0], [5.0, 1.0], [7.0, 9.0]])
    assert metrics.forgetting(r) == pytest.approx(-2.0)
    assert metrics.backward_transfer(r) == pytest.approx(2.0)


def test_continual_world_forgetting_by_hand() -> None:
    # From the end of each task's own training: task 0: 100 - 80 = 20; task 1: 200 - 150 = 50; task 2:
    # 300 - 300 = 0; over all three tasks: 70 / 3. Chaudhry's counts task 1's best (200) the same here.
    assert metrics.forgetting_cw(R) == pytest.approx(70 / 3)
    # A task that improved after its own training and then lost the gain: Chaudhry's counts the loss from
    # the best (60 - 10 = 50), Continual World's from the end of its own training (20 - 10 = 10), over 2.
    r = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [60.0, 5.0, 0.0], [10.0, 5.0, 7.0]])
    assert metrics.forgetting(r) == pytest.approx((50 + 0) / 2)
    assert metrics.forgetting_cw(r) == pytest.approx((10 + 0 + 0) / 3)


def test_single_task_metrics_need_two_tasks() -> None:
    r = np.array([[1.0], [3.0]])
    assert metrics.average_return(r) == 3.0
    for fn in (
        metrics.backward_transfer,
        metrics.forward_transfer,
        metrics.forgetting,
        metrics.forgetting_cw,
    ):
        assert math.isnan(fn(r))


def test_summary_keys() -> None:
    assert metrics.summary(R) == {
        "acc": pytest.approx(530 / 3),
        "bwt": pytest.approx(-35.0),
        "fwt": pytest.approx(20.0),
        "forgetting": pytest.approx(35.0),
        "forgetting_cw": pytest.approx(70 / 3),
    }


@pytest.mark.parametrize("shape", [(3, 3), (2, 3), (4,), (1, 0)])
def test_bad_shapes_are_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        metrics.average_return(np.zeros(shape))


def test_normalize_maps_low_to_zero_and_high_to_one() -> None:
    low, high = np.array([10.0, 20.0, 30.0]), np.array([110.0, 220.0, 330.0])
    n = metrics.normalize(R, low, high)
    assert n[0].tolist() == [0.0, 0.0, 0.0]
    assert n[1, 0] == pytest.approx(0.9)
    assert n[3, 2] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="equal"):
        metrics.normalize(R, low, low)
    with pytest.raises(ValueError, match="shape"):
        metrics.normalize(R, low[:2], high[:2])


def test_auc_forward_transfer_by_hand() -> None:
    # AUC 0.6, reference AUC 0.2: (0.6 - 0.2) / (1 - 0.2) = 0.5
    assert metrics.auc_forward_transfer([0.4, 0.8], [0.0, 0.4]) == pytest.approx(0.5)
    assert metrics.auc_forward_transfer([0.0, 0.4], [0.0, 0.4]) == 0.0
    with pytest.raises(ValueError):
        metrics.auc_forward_transfer([0.5], [1.0])
    with pytest.raises(ValueError):
        metrics.auc_forward_transfer([0.5, 0.5], [0.5])


def test_bootstrap_ci_contains_the_mean_and_is_reproducible() -> None:
    values = [1.0, 2.0, 3.0, 10.0]
    mean, lo, hi = metrics.bootstrap_ci(values, seed=3)
    assert mean == 4.0
    assert 1.0 <= lo < mean < hi <= 10.0
    assert metrics.bootstrap_ci(values, seed=3) == (mean, lo, hi)


def test_bootstrap_ci_of_one_value_and_of_nan() -> None:
    assert metrics.bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)
    assert all(math.isnan(v) for v in metrics.bootstrap_ci([float("nan")]))
    with pytest.raises(ValueError):
        metrics.bootstrap_ci([1.0, 2.0], confidence=1.5)


# ------------------------------------------------------------------------------------------------ visits
CYCLIC = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],
        [10.0, 1.0, 10.0, 1.0],  # after a: 10
        [5.0, 20.0, 5.0, 20.0],  # after b: 20
        [8.0, 15.0, 8.0, 15.0],  # after a.2: 8
        [4.0, 12.0, 4.0, 12.0],  # after b.2: 12
    ]
)


def test_visit_returns_and_gap_by_hand() -> None:
    np.testing.assert_array_equal(metrics.visit_returns(CYCLIC, 2), [[10, 20], [8, 12]])
    assert metrics.visit_gap(CYCLIC, 2) == pytest.approx(((8 - 10) + (12 - 20)) / 2)  # -5
    assert np.isnan(metrics.visit_gap(CYCLIC, 1))
    with pytest.raises(ValueError, match="cycles"):
        metrics.visit_returns(CYCLIC, 3)


def test_visit_curve_means_and_cycle_summary_by_hand() -> None:
    curves = [(50, 0, [4.0, 0, 0, 0]), (60, 0, [6.0, 0, 0, 0]), (250, 2, [0, 0, 2.0, 0])]
    means = metrics.visit_curve_means(curves, 4, 2)
    np.testing.assert_array_equal(means[:, 0], [5.0, 2.0])
    assert np.isnan(means[0, 1]) and np.isnan(means[1, 1])
    assert metrics.cycle_summary(CYCLIC, curves, 2) == {"visit_gap": -5.0, "visit_curve_gap": -3.0}
    assert metrics.cycle_summary(CYCLIC[:3, :2], curves, 2) == {}  # one cycle done: nothing to compare


def test_online_performance_is_the_mean_training_return() -> None:
    assert metrics.online_performance([10.0, 20.0, 60.0]) == 30.0
    assert math.isnan(metrics.online_performance([]))


def test_forgetting_over_time_is_the_drop_from_the_best_so_far() -> None:
    returns = np.array([[1.0, 5.0], [4.0, 3.0], [2.0, 6.0], [3.0, 1.0]])
    expected = np.array([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [1.0, 5.0]])
    np.testing.assert_array_equal(metrics.forgetting_over_time(returns), expected)
    matrix = np.array([[0.0, 0.0], [10.0, 1.0], [4.0, 9.0]])  # a return matrix's rows are points in time
    assert metrics.forgetting_over_time(matrix)[-1, 0] == metrics.forgetting(matrix) == 6.0


def test_curve_area_is_the_time_weighted_mean_by_trapezoids() -> None:
    steps = [0, 10, 30]
    returns = np.array([[0.0, 2.0], [10.0, 2.0], [20.0, 8.0]])
    # setting 0: (0+10)/2*10 + (10+20)/2*20 = 50 + 300 = 350 over 30 steps; setting 1: 20 + 100 = 120 / 30
    np.testing.assert_allclose(metrics.curve_area(steps, returns), [350 / 30, 4.0])
    np.testing.assert_allclose(metrics.curve_area([5], [7.0]), [7.0])
    with pytest.raises(ValueError, match="increasing"):
        metrics.curve_area([0, 0], [1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        metrics.curve_area([0, 1], [1.0])
