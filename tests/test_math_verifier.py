r"""The math verifier: \boxed extraction, math-verify equivalence, timeouts off the main thread, gates."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from laser_rl.errors import LaserError
from laser_rl.rewards.math_verifier import MathVerifier, count_boxes, extract_boxed
from laser_rl.tasks.base import Verifier

# A check that takes sympy ~8 s (expanding a degree-1000 polynomial): far beyond the test deadline.
SLOW_GOLD, SLOW_PRED = "(x+1)^{1000}", r"The answer is \boxed{x^{1000}+1}"


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout_s=10.0)
    yield v
    v.close()


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{42}.", "42"),
        (r"first \boxed{1} then \boxed{2}", "2"),  # the last box counts
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{x \in \{1, 2\}}", r"x \in \{1, 2\}"),  # escaped braces do not close the box
        (r"$\boxed 5$", "5"),  # no braces
        (r"\fbox{7}", "7"),
        (r"\boxed{ 3 }", "3"),
        ("no box at all", None),
        (r"\boxed{}", None),  # empty
        (r"\boxed{1} and then \boxed{2", None),  # the last box is unclosed: unreadable, not the earlier one
        (r"\boxedfoo{3}", None),  # another command, not a box
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_count_boxes():
    assert count_boxes(r"\boxed{1} \fbox{2} \boxedx") == 2


def test_implements_the_verifier_protocol(verifier):
    v: Verifier = verifier
    assert v.extract_answer(r"\boxed{4}") == "4"


@pytest.mark.parametrize(
    "response, answer, reward",
    [
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"\boxed{\frac12}", "1/2", 1.0),
        (r"\boxed{1/2}", "0.5", 1.0),
        (r"\boxed{x=3}", "3", 1.0),
        (r"\boxed{\dfrac{\sqrt3}{2}}", r"\frac{\sqrt{3}}{2}", 1.0),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
        (r"\boxed{81}", "80", 0.0),
        (r"\boxed{0.51}", "1/2", 0.0),
        ("the answer is 80", "80", 0.0),  # no box -> no answer
    ],
)
def test_reward(verifier, response, answer, reward):
    assert verifier.reward(response, answer) == reward


def test_same_answer_groups_equivalent_forms(verifier):
    assert verifier.same_answer("1/2", r"\frac{1}{2}")
    assert verifier.same_answer("0.5", r"\frac12")
    assert not verifier.same_answer("2", "3")


def test_format_gate_and_failure_counter():
    v = MathVerifier(timeout_s=None, require_single_boxed=True)
    assert v.reward(r"\boxed{3}", "3") == 1.0
    assert v.reward(r"\boxed{2} no wait \boxed{3}", "3") == 0.0  # two boxes: gated
    assert v.reward("3", "3") == 0.0  # no box
    s = v.stats()
    assert (
        s["responses"] == 3 and s["format_failures"] == 2 and s["format_failure_rate"] == pytest.approx(2 / 3)
    )
    assert (
        MathVerifier(timeout_s=None).reward(r"\boxed{2} no wait \boxed{3}", "3") == 1.0
    )  # gate off by default
    v.reset_stats()
    assert v.stats()["responses"] == 0


def test_timeout_gives_zero_and_the_worker_recovers():
    # 2 s: a fresh worker's first check (sympy's lazy imports) must fit the deadline on a loaded machine too
    v = MathVerifier(timeout_s=2.0)
    try:
        assert v.reward(r"\boxed{2}", "2.0") == 1.0  # starts the worker
        t = time.perf_counter()
        assert v.reward(SLOW_PRED, SLOW_GOLD) == 0.0
        elapsed = time.perf_counter() - t
        assert elapsed < 5.0, elapsed  # killed at the deadline, not after sympy's ~8 s
        assert v.stats()["timeouts"] == 1
        assert v.reward(r"\boxed{\frac{2}{4}}", "0.5") == 1.0  # a fresh worker answers
        assert v.stats()["worker_starts"] == 2
    finally:
        v.close()


def test_works_off_the_main_thread():
    """math-verify's own signal-based timeout raises off the main thread; ours must not."""
    v = MathVerifier(timeout_s=0.5)
    results: list[object] = []

    def job():
        try:
            results.append(v.reward(r"\boxed{\frac{1}{2}}", "0.5"))
            results.append(v.reward(SLOW_PRED, SLOW_GOLD))
        except Exception as e:  # pragma: no cover - the failure being tested
            results.append(e)

    try:
        th = threading.Thread(target=job)
        th.start()
        th.join(timeout=60)
        assert results == [1.0, 0.0]
    finally:
        v.close()


def test_parallel_workers_and_pickling():
    v = MathVerifier(timeout_s=5.0, workers=2)
    try:
        rewards = v.rewards([r"\boxed{1/2}", r"\boxed{3}", r"\boxed{x=4}", "none"], ["0.5", "4", "4", "1"])
        assert rewards == [1.0, 0.0, 1.0, 0.0]
        clone = pickle.loads(pickle.dumps(v))
        assert clone.workers == 2 and clone.reward(r"\boxed{6}", "6.0") == 1.0
        clone.close()
    finally:
        v.close()


def test_bad_settings():
    with pytest.raises(LaserError, match="timeout_s"):
        MathVerifier(timeout_s=0)
    with pytest.raises(LaserError, match="workers"):
        MathVerifier(workers=0)
