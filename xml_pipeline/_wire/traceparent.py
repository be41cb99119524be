"""The W3C Trace Context ``traceparent`` an envelope may carry (https://www.w3.org/TR/trace-context/).

An envelope's optional ``<meta><traceparent>`` holds the caller's trace context, so that an
organism's spans join the caller's trace. The envelope reader keeps its text as sent and never
refuses an envelope for it; the pump checks it with `traceparent_problem` and ignores one that
is malformed (counted in ``stats.traceparents_ignored`` and logged with the reason).

Version ``00`` is what this reader understands: ``00-<trace-id>-<parent-id>-<trace-flags>``,
32, 16 and 2 lowercase hex digits, neither id all zeros. A higher version is read as version
00 is when its first four fields have that shape (the specification's rule for versions it
does not know); version ``ff`` is invalid.
"""

from __future__ import annotations

__all__ = ["traceparent_problem"]

_HEX = frozenset("0123456789abcdef")
_V00_LENGTH = 55  # 2 + 1 + 32 + 1 + 16 + 1 + 2


def traceparent_problem(value: str) -> str | None:
    """Why ``value`` is not a traceparent this reader can use, or ``None`` when it is one."""
    if len(value) < _V00_LENGTH:
        return f"{len(value)} characters; a version 00 traceparent has {_V00_LENGTH}"
    version = value[:2]
    if not _HEX.issuperset(version) or version == "ff":
        return f"version {version!r} is not two lowercase hex digits below ff"
    if version == "00" and len(value) != _V00_LENGTH:
        return f"{len(value)} characters; a version 00 traceparent has {_V00_LENGTH}"
    if len(value) > _V00_LENGTH and value[_V00_LENGTH] != "-":
        return "fields beyond trace-flags must follow a '-'"
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return "fields must be separated by '-' (version-traceid-parentid-flags)"
    trace_id, parent_id, flags = value[3:35], value[36:52], value[53:55]
    for name, text in (("trace-id", trace_id), ("parent-id", parent_id), ("flags", flags)):
        if not _HEX.issuperset(text):
            return f"{name} {text!r} is not lowercase hex"
    if trace_id == "0" * 32:
        return "trace-id is all zeros"
    if parent_id == "0" * 16:
        return "parent-id is all zeros"
    return None
