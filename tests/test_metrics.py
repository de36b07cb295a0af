"""Metrics on hand-computed accuracy matrices (definitions: docs/metrics.md)."""

import numpy as np
import pytest

from pipeline import metrics

R = [[0.9, 0.1, 0.2], [0.5, 0.8, 0.3], [0.4, 0.6, 0.7]]
B = [0.1, 0.1, 0.1]
# Task 0 peaks after task 1 (0.9), task 1 improves after task 2: the max-based definition and
# Avalanche's initial-based one disagree here.
R_PEAK = [[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.4, 0.9, 0.7]]


def test_average_accuracy_final_and_running():
    assert metrics.average_accuracy(R) == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert metrics.average_accuracy(R, 0) == pytest.approx(0.9)
    assert metrics.average_accuracy(R, 1) == pytest.approx((0.5 + 0.8) / 2)
    assert metrics.average_accuracy(R[:2]) == pytest.approx((0.5 + 0.8) / 2)  # while running


def test_backward_transfer():
    assert metrics.backward_transfer(R) == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
    assert metrics.backward_transfer(R_PEAK) == pytest.approx(0.0)


def test_forward_transfer_uses_untrained_accuracy():
    assert metrics.forward_transfer(R, B) == pytest.approx(((0.1 - 0.1) + (0.3 - 0.1)) / 2)
    assert metrics.forward_transfer(R, [0.0, 0.0, 0.0]) == pytest.approx((0.1 + 0.3) / 2)


def test_forgetting_is_max_based_over_earlier_rows():
    assert metrics.forgetting(R) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.6)) / 2)
    assert metrics.forgetting(R, 1) == pytest.approx(0.9 - 0.5)
    # max over rows 0..1 of task 0 is 0.9 (not R[0][0]); task 1 improved: -0.1, not clipped.
    assert metrics.forgetting(R_PEAK) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.9)) / 2)


def test_plasticity_and_intransigence():
    assert metrics.plasticity(R) == pytest.approx(0.8)
    assert metrics.intransigence(R, [0.95, 0.9, 0.7]) == pytest.approx([0.05, 0.1, 0.0])


def test_retention_is_final_accuracy_on_earlier_tasks():
    assert metrics.retention(R) == pytest.approx((0.4 + 0.6) / 2)
    with pytest.raises(ValueError, match="two tasks"):
        metrics.retention([[0.7]])


def test_summarize_keys_and_single_task():
    s = metrics.summarize(np.array(R), B)
    assert set(s) == {"avg_acc", "plasticity", "bwt", "fwt", "forgetting", "retention"}
    single = metrics.summarize([[0.7]], [0.1])
    assert single == pytest.approx({"avg_acc": 0.7, "plasticity": 0.7})


@pytest.mark.parametrize("bad", [[], [[0.1, 0.2]], [[[0.1]]], [[0.1], [0.2]]])
def test_rejects_non_square(bad):
    with pytest.raises(ValueError, match="square"):
        metrics.backward_transfer(bad)


@pytest.mark.parametrize("bad", [[], [[0.1], [0.2]], [0.5]])
def test_running_average_rejects_more_rows_than_tasks(bad):
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy(bad)


def test_undefined_for_one_task():
    with pytest.raises(ValueError):
        metrics.backward_transfer([[0.5]])
    with pytest.raises(ValueError):
        metrics.forgetting([[0.5]])
    with pytest.raises(ValueError, match="one accuracy per task"):
        metrics.forward_transfer(R, [0.1])
