"""The behaviour every `RetryPolicy` must have, and the pump running a hop again on its word."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from xml_pipeline import HandlerMetadata, HandlerResponse, Listener, ParseLimits, Reason, payload
from xml_pipeline._runtime.pump import StreamPump
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._runtime.retry import NoRetry, RetryPolicy
from xml_pipeline.backends import MemoryBackend


class RetryHandlerErrorsTwice:
    """A policy of the kind the recovery work will configure: handler errors, twice, at once."""

    def next_delay(self, attempt: int, reason: str) -> float | None:
        return 0.0 if reason == Reason.HANDLER_ERROR and attempt < 3 else None


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
            delay = policy.next_delay(attempt, reason)
            assert delay is None or delay >= 0

    def test_gives_up_eventually(self, policy: RetryPolicy) -> None:
        assert any(policy.next_delay(attempt, "handler_error") is None for attempt in range(1, 100))


class TestNoRetry(RetryPolicyContract):
    @pytest.fixture
    def policy(self) -> RetryPolicy:
        return NoRetry()

    def test_never_retries(self, policy: RetryPolicy) -> None:
        assert all(policy.next_delay(1, reason) is None for reason in Reason)


class TestRetryHandlerErrorsTwice(RetryPolicyContract):
    @pytest.fixture
    def policy(self) -> RetryPolicy:
        return RetryHandlerErrorsTwice()


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
