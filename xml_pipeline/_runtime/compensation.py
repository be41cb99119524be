"""Compensation (the saga pattern's undo step): when a conversation fails, each listener with
a ``compensate`` handler that had answered in it is called with its answer, newest first, once.
"""

from __future__ import annotations

import inspect
import logging

import anyio

from xml_pipeline._errors import DeliveryError, Reason, raised_at
from xml_pipeline._handlers import HandlerMetadata
from xml_pipeline._runtime.dead_letters import DeadLetterRecorder
from xml_pipeline._runtime.hops import ListenerState

__all__ = ["compensate"]

log = logging.getLogger("xml_pipeline.pump")


async def compensate(
    conversation: str,
    answers: list[tuple[ListenerState, object]],
    error: DeliveryError,
    dead_letters: DeadLetterRecorder,
) -> None:
    """Conversation ``conversation`` failed with ``error``: run the ``compensate`` handler of
    each listener in ``answers`` (``(listener, its answer)``, oldest first) for its answer,
    newest answer first, each within the listener's ``timeout_seconds``; a compensation that
    fails is counted and kept in ``dead_letters`` with reason ``compensation_failed``."""
    for state, answer in reversed(answers):
        handler = state.compensate
        assert handler is not None
        recovery = state.recovery
        recovery.compensations += 1
        meta = HandlerMetadata(conversation, "_compensation", state.name)
        try:
            with anyio.fail_after(state.timeout):
                result = handler(answer, meta)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            recovery.compensations_failed += 1
            message = (
                f"the compensation of {state.name!r} for its answer "
                f"{type(answer).__qualname__} in failed conversation {conversation} "
                f"([{error.reason}]) raised {type(exc).__name__}: {exc}{raised_at(exc)}"
            )
            recovery.error(Reason.COMPENSATION_FAILED, message)
            dead_letters.record_compensation(conversation, state.name, answer, message)
        else:
            log.info(
                "compensated the answer of %r in failed conversation %s",
                state.name, conversation,
            )  # fmt: skip
