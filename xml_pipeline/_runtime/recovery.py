"""How each listener recovers: its counters of attempts, retries and compensations, and the
snapshot `Organism.recovery_status` gives of them."""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["ListenerRecovery", "RecoveryCounters"]


@dataclass(frozen=True, slots=True)
class ListenerRecovery:
    """One listener's recovery since the organism started (`Organism.recovery_status`).

    Attributes:
        circuit: ``closed``, ``open`` or ``half_open``; ``None`` without a ``circuit`` section.
        attempts: handler runs started (first attempts and retries).
        retries: runs started again by the retry policy.
        recovered: hops that succeeded after at least one retry.
        exhausted: hops whose failure was final although the policy would retry its reason:
            out of attempts, or no time left before the request's deadline.
        circuit_rejections: hops failed at once with ``circuit_open``.
        compensations: compensations run for this listener's answers.
        compensations_failed: of those, the ones that failed (dead-lettered with
            ``compensation_failed``).
        last_error: the last failure of a run or a compensation, ``[reason] message``.
        last_error_at: when it happened (seconds since the epoch).
    """

    circuit: str | None = None
    attempts: int = 0
    retries: int = 0
    recovered: int = 0
    exhausted: int = 0
    circuit_rejections: int = 0
    compensations: int = 0
    compensations_failed: int = 0
    last_error: str | None = None
    last_error_at: float | None = None


class RecoveryCounters:
    """The live counters behind `ListenerRecovery` (one per listener)."""

    __slots__ = (
        "attempts", "circuit_rejections", "compensations", "compensations_failed", "exhausted",
        "last_error", "last_error_at", "recovered", "retries",
    )  # fmt: skip

    def __init__(self) -> None:
        self.attempts = self.retries = self.recovered = self.exhausted = 0
        self.circuit_rejections = self.compensations = self.compensations_failed = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def error(self, reason: str, message: str) -> None:
        """Remember the latest failure."""
        self.last_error = f"[{reason}] {message}"
        self.last_error_at = time.time()

    def snapshot(self, circuit: str | None) -> ListenerRecovery:
        """The counters now, frozen."""
        values = {name: getattr(self, name) for name in self.__slots__}
        return ListenerRecovery(circuit=circuit, **values)
