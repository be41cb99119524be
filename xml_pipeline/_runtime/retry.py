"""The retry policy applied around a handler run: none by default, `BackoffRetry` when a
listener declares ``retry:``.

When a run fails, the pump asks its listener's policy whether to run the same hop again and
after how long. The run is repeated from the same input on the same thread: what the failed
attempt returned was never routed (a failure happens before routing), and the calls it still
had in flight are withdrawn (see `StreamPump._roll_back`). The contract every policy keeps is
pinned by a suite (tests/runtime/test_retry_contract.py) that every policy is run against.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from xml_pipeline._settings import RetrySettings

__all__ = ["AttemptFailure", "BackoffRetry", "NoRetry", "RetryPolicy", "policy_for"]


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """What is known of a failed run, for the retry policy.

    Attributes:
        reason: its reason code (a `Reason` value: ``handler_error``, ``timeout``...).
        exception_types: ``module.QualName`` of the exception's class and of its bases (in
            process or in a worker).
        retry_after: the delay a handler asked for by raising `RetryLater`.
        permanent: the handler raised `PermanentError`: never retried.
    """

    reason: str
    exception_types: tuple[str, ...] = ()
    retry_after: float | None = None
    permanent: bool = False


@runtime_checkable
class RetryPolicy(Protocol):
    """Decides whether a failed hop runs again.

    Implementations must be cheap (called on the failure path only), must not block, and must
    not raise: the pump calls them while it routes the failure.
    """

    def next_delay(self, attempt: int, failure: AttemptFailure) -> float | None:
        """The delay in seconds before attempt ``attempt + 1``, or ``None`` for no more tries.

        Args:
            attempt: the attempt that just failed, from 1.
            failure: how it failed.

        Returns:
            ``None`` to give up (the failure travels to the caller as without a policy), or
            a delay ``>= 0``; after it the same hop runs again with ``attempt + 1``.
        """
        ...


class NoRetry:
    """The default: a failure is final."""

    def next_delay(self, attempt: int, failure: AttemptFailure) -> None:
        """Never retries."""
        return None

    def __repr__(self) -> str:
        return "NoRetry()"


class BackoffRetry:
    """Capped exponential backoff with jitter, for the reasons in ``settings.on``.

    Attempt ``n`` failed: attempt ``n + 1`` runs after ``min(max_seconds, initial_seconds *
    multiplier ** (n - 1))`` seconds, jittered (``full``: uniform from 0; ``equal``: uniform
    from half), unless ``n`` reached ``attempts``, the reason is not in ``on``, the exception
    is or derives from a class in ``never``, or the handler raised `PermanentError`. A
    `RetryLater` sets the delay itself, whatever its reason, within ``attempts``.
    """

    __slots__ = ("_never", "_on", "_random", "settings")

    def __init__(self, settings: RetrySettings, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self._on = frozenset(settings.on)
        self._never = frozenset(settings.never)
        self._random = rng

    def next_delay(self, attempt: int, failure: AttemptFailure) -> float | None:
        """See `RetryPolicy.next_delay`."""
        settings = self.settings
        if failure.permanent or attempt >= settings.attempts:
            return None
        if failure.retry_after is not None:
            return failure.retry_after
        if failure.reason not in self._on or not self._never.isdisjoint(failure.exception_types):
            return None
        backoff = settings.backoff
        growth = backoff.multiplier ** (attempt - 1)
        delay = min(backoff.max_seconds, backoff.initial_seconds * growth)
        if backoff.jitter == "full":
            return delay * self._random()
        if backoff.jitter == "equal":
            return delay / 2 + delay / 2 * self._random()
        return delay

    def __repr__(self) -> str:
        return f"BackoffRetry({self.settings!r})"


def policy_for(settings: RetrySettings | None) -> RetryPolicy:
    """The policy a listener's ``retry`` settings describe (`NoRetry` for none)."""
    return NoRetry() if settings is None else BackoffRetry(settings)
