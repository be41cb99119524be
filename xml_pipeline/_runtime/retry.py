"""The retry policy applied around a handler run: a seam, with no retries by default.

When a hop fails, the pump asks its listener's policy whether to run the same hop again and
after how long. The run is repeated from the same input; what the failed attempt returned was
never routed (a failure happens before routing). Real policies (capped exponential backoff,
jitter, reasons to retry, exception types that never retry, circuit breakers) come with the
recovery work; this module fixes the contract they implement, pinned by a contract suite
(tests/runtime/test_retry_contract.py) that every policy is run against.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["NoRetry", "RetryPolicy"]


@runtime_checkable
class RetryPolicy(Protocol):
    """Decides whether a failed hop runs again.

    Implementations must be cheap (called on the failure path only), must not block, and must
    not raise: the pump calls them while it routes the failure.
    """

    def next_delay(self, attempt: int, reason: str) -> float | None:
        """The delay in seconds before attempt ``attempt + 1``, or ``None`` for no more tries.

        Args:
            attempt: the attempt that just failed, from 1.
            reason: its reason code (a `Reason` value, e.g. ``handler_error``, ``timeout``).

        Returns:
            ``None`` to give up (the failure travels to the caller as today), or a delay
            ``>= 0``; after it the same hop runs again with ``attempt + 1``.
        """
        ...


class NoRetry:
    """The default: a failure is final."""

    def next_delay(self, attempt: int, reason: str) -> None:
        """Never retries."""
        return None

    def __repr__(self) -> str:
        return "NoRetry()"
