"""One Hub retry budget per run: connection failures spend it, a success refills it, and once it is
spent the Hub is unreachable for the rest of the run (every source reads the cache only)."""

from __future__ import annotations

import errno
import socket

import pytest

from checkpoints import hub_status
from checkpoints.hub_errors import RetryPolicy, cache_only
from dynamics.errors import CheckpointError


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def refused() -> None:
    raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


def test_the_budget_is_spent_once_per_run_and_refilled_by_a_success():
    assert [hub_status.spend_retry() for _ in range(hub_status.CONNECTION_RETRIES + 1)] == [True] * (
        hub_status.CONNECTION_RETRIES
    ) + [False]
    hub_status.note_reached()
    assert hub_status.spend_retry()
    hub_status.note_unreachable("first reason")
    hub_status.note_unreachable("second reason")
    assert hub_status.unreachable_reason() == "first reason"
    hub_status.note_reached()  # too late: the run gave the Hub up
    assert not hub_status.spend_retry()
    hub_status.forget()
    assert hub_status.unreachable_reason() is None and hub_status.spend_retry()


def test_best_effort_failures_spend_the_budget_then_note_the_hub_unreachable():
    for _ in range(hub_status.CONNECTION_RETRIES):
        hub_status.note_failure("Connection refused")
        assert hub_status.unreachable_reason() is None
    hub_status.note_failure("Connection refused")
    assert hub_status.unreachable_reason() == "Connection refused"


def test_a_dead_network_is_retried_from_the_runs_budget_across_calls(online):
    waits, calls = [], []

    def dead():
        calls.append(1)
        refused()

    policy = RetryPolicy(attempts=10, backoff=1.0, sleep=waits.append)
    with pytest.raises(CheckpointError, match=r"x: the Hugging Face Hub cannot be reached \(\[Errno 111\]"):
        policy.call(dead, "x")
    assert len(calls) == 1 + hub_status.CONNECTION_RETRIES and waits == [1.0, 2.0]
    assert cache_only() and "Connection refused" in (hub_status.unreachable_reason() or "")
    with pytest.raises(CheckpointError, match="after 1 attempt"):  # a later call: no retry, no wait
        policy.call(dead, "y")
    assert len(calls) == 2 + hub_status.CONNECTION_RETRIES and waits == [1.0, 2.0]


def test_other_transient_errors_keep_their_own_retries(online):
    waits = []

    def busy():
        raise RuntimeError("HTTP 503 Service Unavailable")

    with pytest.raises(CheckpointError, match="503 Service Unavailable .after 4 attempt"):
        RetryPolicy(attempts=4, backoff=1.0, sleep=waits.append).call(busy, "x")
    assert waits == [1.0, 2.0, 4.0] and hub_status.unreachable_reason() is None


@pytest.mark.parametrize(
    "exc",
    [
        socket.gaierror(-2, "Name or service not known"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        RuntimeError("ConnectError: [Errno 111] Connection refused"),
    ],
)
def test_what_counts_as_a_network_that_is_not_there(exc):
    assert hub_status.is_connection_failure(exc)
    wrapped = RuntimeError("could not list")
    wrapped.__cause__ = exc
    assert hub_status.is_connection_failure(wrapped)


def test_a_server_that_answers_badly_is_no_dead_network():
    assert not hub_status.is_connection_failure(RuntimeError("HTTP 500 Internal Server Error"))
    assert not hub_status.is_connection_failure(ConnectionResetError("reset by peer"))
