"""A listener's circuit breaker: fail fast while a peer keeps failing, probe, close again.

The states and their changes follow Nygard's "Release It!" (and the usual closed / open /
half-open breaker of resilience libraries): ``closed`` lets every hop run and counts failed
runs in a row; at ``failures`` it opens, and hops fail at once with ``circuit_open`` for
``reset_seconds``; then it is ``half_open``: one hop runs as a probe (others still fail fast),
and its success closes the circuit, its failure opens it again.
"""

from __future__ import annotations

from typing import Literal

from xml_pipeline._settings import CircuitSettings

__all__ = ["CircuitBreaker", "CircuitState"]

CircuitState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """One listener's breaker; ``now`` is the event loop's clock (seconds)."""

    __slots__ = ("_opened_at", "_probing", "failures_in_row", "settings", "state")

    def __init__(self, settings: CircuitSettings) -> None:
        self.settings = settings
        self.state: CircuitState = "closed"
        self.failures_in_row = 0
        self._opened_at = 0.0
        self._probing = False

    def allow(self, now: float) -> bool:
        """Whether a hop may run now (a half-open circuit lets one probe through)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if now - self._opened_at < self.settings.reset_seconds:
                return False
            self.state = "half_open"
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_in(self, now: float) -> float:
        """Seconds until an open circuit lets a probe through (0 when it would now)."""
        return max(0.0, self._opened_at + self.settings.reset_seconds - now)

    def succeeded(self) -> None:
        """A run succeeded: the circuit closes (a probe's success closes a half-open one)."""
        self.state = "closed"
        self.failures_in_row = 0
        self._probing = False

    def failed(self, now: float) -> bool:
        """A run failed. Returns True when this opened the circuit."""
        self.failures_in_row += 1
        if self.state == "half_open" or (
            self.state == "closed" and self.failures_in_row >= self.settings.failures
        ):
            self.state = "open"
            self._opened_at = now
            self._probing = False
            return True
        return False

    def released(self) -> None:
        """A probe ended without a verdict (its conversation ended): let another probe in."""
        self._probing = False
