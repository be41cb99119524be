"""The ``control:`` section: where the control plane listens and where its token comes from.

Imported by the config reader, so it imports nothing but `_settings` and `_errors` (never
starlette or uvicorn: the ``[web]`` extra is needed only when the control plane starts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xml_pipeline._settings import check_fields, parse_address, setting

__all__ = ["DEFAULT_LISTEN", "ControlConfig", "parse_listen"]

DEFAULT_LISTEN = "127.0.0.1:8750"


def parse_listen(value: str | int) -> tuple[str, int] | None:
    """``[HOST:]PORT`` (``[::1]:8750`` for IPv6) as ``(host, port)``; a bare port (text or int,
    as in ``listen: 8750`` or ``--control 8750``) listens on 127.0.0.1. None when it is not that
    shape or the port is out of range (0: a free one). One parser for the file and the CLI."""
    return parse_address(value)


def _listen(value: str | int, values: Mapping[str, Any]) -> str | None:
    if parse_listen(value) is not None:
        return None
    return f"must be [host:]port (like {DEFAULT_LISTEN}; port 0 picks a free one), found {value!r}"


def _env_name(value: str, values: Mapping[str, Any]) -> str | None:
    if value and "=" not in value and not value[0].isdigit() and value.strip() == value:
        return None
    return f"must name an environment variable (like XP_CONTROL_TOKEN), found {value!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    """The control plane: an HTTP JSON API, an event stream, ``/metrics`` and the web console,
    started and stopped with the organism (needs ``pip install 'xml-pipeline[web]'``).

    Raises:
        UsageError: a setting has the wrong type or an impossible value.
    """

    listen: str = field(
        default=DEFAULT_LISTEN,
        metadata=setting(
            "address",
            "[host:]port to serve on (a port alone: on 127.0.0.1); port 0: a free one; "
            "beyond loopback needs a token",
            rule=_listen,
        ),
    )
    token_env: str = field(
        default="XP_CONTROL_TOKEN",
        metadata=setting(
            "text",
            "the environment variable holding the bearer token every request must carry; "
            "unset when the organism starts: no token (loopback only, a WARNING at start)",
            rule=_env_name,
        ),
    )
    client_buffer: int = field(
        default=1000,
        metadata=setting(
            "integer",
            "events held per event-stream client; beyond it new ones are dropped and counted",
            minimum=1,
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)

    @property
    def host_port(self) -> tuple[str, int]:
        """``listen`` as ``(host, port)``."""
        found = parse_listen(self.listen)
        assert found is not None  # checked at construction
        return found
