import itertools
import json
import math

import pytest

from rlwork.evaluation.passk import format_passk_table, mean_pass_at_k, pass_at_k, per_problem_pass_at_k

HAND_CASES = [
    (1, 1, 1, 1.0),  # the only sample passes
    (1, 0, 1, 0.0),  # the only sample fails
    (2, 1, 1, 0.5),  # pass@1 is the pass fraction
    (10, 3, 1, 0.3),  # pass@1 is the pass fraction
    (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 4, 1.0),  # only 3 failures: every 4-subset holds a pass
    (6, 1, 3, 0.5),  # 1 - C(5,3)/C(6,3) = 1 - 10/20
    (8, 0, 8, 0.0),  # no passes at all
]


@pytest.mark.parametrize(("n", "c", "k", "expected"), HAND_CASES)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def brute_force(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form does not.
    exact = 1 - math.comb(700, 500) / math.comb(1000, 500)
    assert pass_at_k(1000, 300, 500) == pytest.approx(exact, rel=1e-9)
    assert 0.0 < pass_at_k(1000, 1, 1) < 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (2, 3, 1), (3, -1, 1), (3, 1, 0)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_k_larger_than_n_message_names_values():
    with pytest.raises(ValueError, match="k=4 > n=3"):
        mean_pass_at_k({"a": [True, False, False]}, ks=[1, 4])


def test_mean_and_per_problem():
    verdicts = {"a": [True, False, False, False], "b": [True, True, True, True], "c": [False] * 4}
    per = per_problem_pass_at_k(verdicts, ks=[1, 2])
    assert per["a"] == {1: pytest.approx(0.25), 2: pytest.approx(0.5)}
    assert per["b"] == {1: 1.0, 2: 1.0}
    assert per["c"] == {1: 0.0, 2: 0.0}
    mean = mean_pass_at_k(verdicts, ks=[1, 2])
    assert mean == {"pass@1": pytest.approx(1.25 / 3), "pass@2": pytest.approx(1.5 / 3)}


def test_mean_allows_different_sample_counts():
    mean = mean_pass_at_k({"a": [True, False], "b": [False, False, False, True]}, ks=[1])
    assert mean["pass@1"] == pytest.approx((0.5 + 0.25) / 2)


def test_mean_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        mean_pass_at_k({}, ks=[1])


def test_format_table_two_columns():
    a = {"pass@1": 0.125, "pass@8": 0.5}
    b = {"pass@1": 0.25, "pass@8": 0.375}
    table, data = format_passk_table(a, b, names=("base", "rl"))
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "rl", "delta"]
    assert lines[2].split() == ["pass@1", "0.1250", "0.2500", "+0.1250"]
    assert lines[3].split() == ["pass@8", "0.5000", "0.3750", "-0.1250"]
    assert len({len(line) for line in lines}) == 1  # aligned: every line has the same width
    assert data == {"base": a, "rl": b, "delta": {"pass@1": 0.125, "pass@8": -0.125}}
    assert json.loads(json.dumps(data)) == data


def test_format_table_one_column_and_mismatch():
    table, data = format_passk_table({"pass@1": 1.0})
    assert table.splitlines()[0].split() == ["metric", "base"]
    assert data == {"base": {"pass@1": 1.0}}
    with pytest.raises(ValueError, match="differ in metrics"):
        format_passk_table({"pass@1": 0.1}, {"pass@2": 0.2})
