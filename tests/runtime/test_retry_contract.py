"""The behaviour every `RetryPolicy` must have, and the pump running a hop again on its word."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from xml_pipeline import HandlerMetadata, HandlerResponse, Listener, ParseLimits, Reason, payload
from xml_pipeline._runtime.pump import StreamPump
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._runtime.retry import AttemptFailure, BackoffRetry, NoRetry, RetryPolicy
from xml_pipeline._settings import BackoffSettings, RetrySettings
from xml_pipeline.backends import MemoryBackend


class RetryHandlerErrorsTwice:
    """A policy of the kind the recovery work will configure: handler errors, twice, at once."""

    def next_delay(self, attempt: int, failure: AttemptFailure) -> float | None:
        if failure.permanent:
            return None
        return 0.0 if failure.reason == Reason.HANDLER_ERROR and attempt < 3 else None


class RetryPolicyContract:
    @pytest.fixture
    def policy(self) -> RetryPolicy:
        raise NotImplementedError

    def test_implements_the_protocol(self, policy: RetryPolicy) -> None:
        assert isinstance(policy, RetryPolicy)

    @pytest.mark.parametrize("reason", list(Reason))
    def test_answers_none_or_a_delay_that_is_not_negative(
        self, policy: RetryPolicy, reason: Reason
    ) -> None:
        for attempt in range(1, 12):
            delay = policy.next_delay(attempt, AttemptFailure(reason))
            assert delay is None or delay >= 0

    def test_gives_up_eventually(self, policy: RetryPolicy) -> None:
        failure = AttemptFailure("handler_error")
        assert any(policy.next_delay(attempt, failure) is None for attempt in range(1, 100))

    def test_never_retries_a_permanent_error(self, policy: RetryPolicy) -> None:
        failure = AttemptFailure("handler_error", permanent=True)
        assert all(policy.next_delay(attempt, failure) is None for attempt in range(1, 12))


class TestNoRetry(RetryPolicyContract):
    @pytest.fixture
    def policy(self) -> RetryPolicy:
        return NoRetry()

    def test_never_retries(self, policy: RetryPolicy) -> None:
        assert all(policy.next_delay(1, AttemptFailure(reason)) is None for reason in Reason)


class TestRetryHandlerErrorsTwice(RetryPolicyContract):
    @pytest.fixture
    def policy(self) -> RetryPolicy:
        return RetryHandlerErrorsTwice()


class TestBackoffRetry(RetryPolicyContract):
    @pytest.fixture(params=["full", "equal", "none"])
    def policy(self, request: pytest.FixtureRequest) -> RetryPolicy:
        backoff = BackoffSettings(initial_seconds=0.2, max_seconds=1.0, jitter=request.param)
        return BackoffRetry(RetrySettings(attempts=5, backoff=backoff))

    def test_delays_grow_by_the_multiplier_up_to_the_cap(self) -> None:
        backoff = BackoffSettings(initial_seconds=0.2, max_seconds=1.0, jitter="none")
        policy = BackoffRetry(RetrySettings(attempts=6, backoff=backoff))
        failure = AttemptFailure("timeout")
        delays = [policy.next_delay(n, failure) for n in range(1, 7)]
        assert delays == [0.2, 0.4, 0.8, 1.0, 1.0, None]  # 6 attempts in all: 5 retries

    @pytest.mark.parametrize(("jitter", "low", "high"), [("full", 0.0, 0.8), ("equal", 0.4, 0.8)])
    def test_jitter_draws_within_its_range(self, jitter: str, low: float, high: float) -> None:
        backoff = BackoffSettings(initial_seconds=0.2, max_seconds=10, jitter=jitter)
        failure = AttemptFailure("timeout")
        for draw in (0.0, 0.5, 0.999):
            policy = BackoffRetry(RetrySettings(attempts=9, backoff=backoff), rng=lambda d=draw: d)
            delay = policy.next_delay(3, failure)  # 0.2 * 2 ** 2 = 0.8 before jitter
            assert delay is not None and low <= delay <= high

    def test_only_the_reasons_listed_and_never_the_types_listed(self) -> None:
        policy = BackoffRetry(RetrySettings(on=("timeout",), never=(KeyError,)))
        assert policy.next_delay(1, AttemptFailure("timeout")) is not None
        assert policy.next_delay(1, AttemptFailure("handler_error")) is None
        lookup_error = ("builtins.KeyError", "builtins.LookupError", "builtins.Exception")
        on_all = BackoffRetry(RetrySettings(never=(LookupError,)))
        assert on_all.next_delay(1, AttemptFailure("handler_error", lookup_error)) is None
        assert on_all.next_delay(1, AttemptFailure("handler_error", ("builtins.OSError",)))

    def test_retry_later_sets_the_delay_whatever_the_reason_within_the_attempts(self) -> None:
        policy = BackoffRetry(RetrySettings(attempts=2, on=("timeout",)))
        asked = AttemptFailure("handler_error", retry_after=7.5)
        assert policy.next_delay(1, asked) == 7.5
        assert policy.next_delay(2, asked) is None


@payload
@dataclass
class Job:
    n: int = 0


@pytest.mark.anyio
async def test_the_pump_runs_a_failed_hop_again_when_the_policy_says_so() -> None:
    runs: list[int] = []

    async def flaky(msg: Job, meta: HandlerMetadata) -> HandlerResponse:
        runs.append(msg.n)
        if len(runs) < 3:
            raise RuntimeError("not yet")
        return HandlerResponse.respond(msg)

    backend = MemoryBackend()
    registry = ThreadRegistry(backend, "retry")
    await registry.initialize_root()
    pump = StreamPump(
        [Listener("flaky", Job, flaky)],
        registry,
        limits=ParseLimits(),
        ingress_limit=8,
        ingress_wait_seconds=1,
        max_hops=100,
        retry=RetryHandlerErrorsTwice(),
    )
    pump.start()
    try:
        assert await pump.request("flaky", Job(n=7), timeout=5) == Job(n=7)
        assert runs == [7, 7, 7]
        assert pump.stats.retries == 2
        assert pump.stats.handler_errors == 2
        assert await registry.size() == 1
    finally:
        await pump.aclose(1.0)
