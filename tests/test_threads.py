"""The BLAS thread policy: each rule on a case built for it, and that every run applies it."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
from threadpoolctl import threadpool_info

from gradcheck_cli.io import threads
from gradcheck_cli.io.threads import Decision, ThreadsError, decide, requested
from tests.conftest import SAMPLE, assert_clean_error, run

BIG = dict(rows=32, state=256, gate_width=1024, dtype="float64")       # 8.4M per step
QUIET = dict(running=0, usable=2, machine=2)


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.mark.parametrize("text,count", [("", None), ("auto", None), (" AUTO ", None),
                                        ("1", 1), ("12", 12)])
def test_the_override_is_a_count_or_auto(text, count):
    assert requested({threads.VARIABLE: text}) == count


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", "٣", "1e3", "4097", "9" * 5000])
def test_a_bad_override_is_refused_naming_the_variable(text):
    with pytest.raises(ThreadsError, match=threads.VARIABLE):
        requested({threads.VARIABLE: text})


def test_the_override_wins_over_everything():
    decision = decide(**BIG, environ={threads.VARIABLE: "3", "OPENBLAS_NUM_THREADS": "1"},
                      running=5, usable=2, machine=2)
    assert decision.threads == 3


@pytest.mark.parametrize("name", threads.BLAS_VARIABLES)
def test_a_blas_variable_the_user_set_is_left_alone(name):
    decision = decide(**BIG, environ={name: "4"}, **QUIET)
    assert decision == Decision(None, f"{name} is set")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_small_problem_runs_on_one_thread(dtype):
    small = threads.SMALL_PRODUCT[dtype]
    below = decide(rows=1, state=1, gate_width=small - 1, dtype=dtype, environ={}, **QUIET)
    at = decide(rows=1, state=1, gate_width=small, dtype=dtype, environ={}, **QUIET)
    assert below.threads == 1 and at.threads == 2


@pytest.mark.parametrize("running,usable,machine,expected", [
    (0, 2, 2, 2),          # quiet: every core
    (1, 2, 2, 1),          # one core busy: the other
    (2, 2, 2, 1),          # both busy: one thread, not two fighting the others
    (7, 2, 2, 1),
    (3, 4, 8, 4),          # four cores of a larger machine, five of its eight free
    (6, 4, 8, 2),          # ... two free
    (0, 1, 8, 1),          # affinity or a cgroup quota of one core
])
def test_threads_are_the_free_cores(running, usable, machine, expected):
    decision = decide(**BIG, environ={}, running=running, usable=usable, machine=machine)
    assert decision.threads == expected, decision


def test_the_machine_is_read_when_not_given():
    assert threads.own_running() >= 1
    assert threads.other_running() >= 0
    assert 1 <= threads.usable_cores() <= (os.cpu_count() or 1)
    assert decide(**BIG, environ={}).threads in range(1, (os.cpu_count() or 1) + 1)


def test_the_decision_holds_the_blas_for_the_block_and_no_longer():
    before = blas_threads()
    with threads.limited(Decision(1, "test")):
        assert set(blas_threads()) == {1}
    assert blas_threads() == before
    with threads.limited(Decision(None, "left alone")):
        assert blas_threads() == before


@pytest.fixture
def decisions(monkeypatch):
    """Every decision a run applies, in order."""
    seen: list[Decision] = []
    applied = threads.limited

    @contextmanager
    def record(decision):
        seen.append(decision)
        with applied(decision) as d:
            yield d

    monkeypatch.setattr(threads, "limited", record)
    monkeypatch.setenv(threads.VARIABLE, "1")
    return seen


@pytest.mark.parametrize("command", [
    ["analyze", "--trials", "0", "--windows", "none"],
    ["verify", "--directions", "1", "--entries", "0"],
    ["simulate", "--steps", "2"],
])
def test_every_run_applies_the_policy(decisions, command):
    result = run(*command[:1], SAMPLE["rnn_healthy"], *command[1:],
                 "--set", "sequence.length=5")
    assert result.exit_code in (0, 1), result.stderr
    assert decisions == [Decision(1, f"{threads.VARIABLE}=1")]


def test_threads_option_sets_the_run_and_refuses_nonsense(decisions, monkeypatch):
    monkeypatch.delenv(threads.VARIABLE)
    result = run("analyze", SAMPLE["rnn_healthy"], "--threads", "2", "--trials", "0",
                 "--windows", "none", "--set", "sequence.length=5")
    assert result.exit_code == 0, result.stderr
    assert decisions == [Decision(2, f"{threads.VARIABLE}=2")]
    assert_clean_error(run("analyze", SAMPLE["rnn_healthy"], "--threads", "none"),
                       "--threads", "'none'")


def test_a_bad_variable_is_a_clean_error_before_any_work(monkeypatch):
    monkeypatch.setenv(threads.VARIABLE, "lots")
    assert_clean_error(run("analyze", SAMPLE["rnn_healthy"]), threads.VARIABLE, "'lots'")
