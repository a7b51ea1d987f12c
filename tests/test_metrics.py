"""Hand-computed cases for mnk.methods.metrics (the numbers every summary table prints).

Convention (mnk.methods.metrics): accuracy = mean over tasks; 95% half-width =
1.96 * std / sqrt(n_tasks) with the population std (ddof=0, numpy's default).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnk.methods.metrics import accuracy_ci, per_task_accuracy


def test_accuracy_ci_hand_case():
    # [0, 1, 0, 1]: mean 0.5, population std 0.5, n 4 -> half-width 1.96 * 0.5 / 2 = 0.49
    ci = accuracy_ci([0, 1, 0, 1])
    assert ci == {"accuracy": 0.5, "ci95_low": pytest.approx(0.01, abs=1e-12),
                  "ci95_high": pytest.approx(0.99, abs=1e-12), "n_tasks": 4}
    # std / n (0.245) or the sample std (ddof=1: 0.566) would give other widths
    assert ci["ci95_high"] - ci["accuracy"] != pytest.approx(1.96 * 0.5 / 4)
    assert ci["ci95_high"] - ci["accuracy"] != pytest.approx(1.96 * math.sqrt(1 / 3) / 2)


def test_accuracy_ci_second_hand_case_and_single_task():
    # [0.2, 0.4, 0.6, 0.8, 1.0] : mean 0.6, population variance 0.08, n 5
    ci = accuracy_ci(np.array([0.2, 0.4, 0.6, 0.8, 1.0]))
    half = 1.96 * math.sqrt(0.08) / math.sqrt(5)
    assert ci["accuracy"] == pytest.approx(0.6)
    assert (ci["ci95_low"], ci["ci95_high"]) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    one = accuracy_ci([0.3])
    assert one["ci95_low"] == one["ci95_high"] == one["accuracy"] == 0.3


@pytest.mark.parametrize("bad,match", [([], "no tasks"), ([0.5, float("nan")], "NaN")])
def test_accuracy_ci_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        accuracy_ci(bad)


def test_per_task_accuracy_hand_case():
    pred = [[0, 1, 2, 3], [1, 1, 1, 1]]
    true = [[0, 1, 2, 0], [0, 1, 2, 3]]
    assert per_task_accuracy(pred, true).tolist() == [0.75, 0.25]
    assert per_task_accuracy([2, 2], [2, 1]).tolist() == [0.5]  # one task
    with pytest.raises(ValueError, match="shape"):
        per_task_accuracy([[0, 1]], [[0, 1, 2]])
