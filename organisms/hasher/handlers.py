"""Handlers of the hasher organism: an inline desk and a CPU-bound hasher."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class HashJob:
    """Stretch ``data`` with PBKDF2-HMAC-SHA256 for ``rounds`` rounds."""

    data: str
    rounds: int = 100_000


@payload
@dataclass
class Digest:
    """The hex digest of a finished job."""

    hex: str
    rounds: int


async def desk(msg: HashJob | Digest, meta: HandlerMetadata) -> HandlerResponse:
    """Inline: pass jobs to the hasher, pass digests back to whoever asked."""
    if isinstance(msg, HashJob):
        return HandlerResponse(msg, to="hasher")
    return HandlerResponse.respond(msg)


def hash_job(msg: HashJob, meta: HandlerMetadata) -> HandlerResponse:
    """CPU-bound: runs in a worker process, so the event loop never waits for it."""
    digest = hashlib.pbkdf2_hmac("sha256", msg.data.encode(), b"xml-pipeline", msg.rounds)
    return HandlerResponse.respond(Digest(hex=digest.hex(), rounds=msg.rounds))
