"""``organism ps|top|logs|kill|cancel|stats``: a running organism's control plane, from a shell.

organism ps [--listener L] [--status S]       the runs: running, waiting, queued, recent
organism top [--interval S] [--count N]       the same, refreshed (Ctrl-C ends it); --json:
                                              one JSON line per refresh
organism logs RUN [--follow]                  a run's output lines (--follow: until it ends)
organism kill RUN                             cancel a running handler (its caller: cancelled)
organism cancel CONVERSATION                  end a conversation with cancelled
organism stats                                the organism's counters and per-listener ones
organism trace CONVERSATION --control URL     a conversation's hop tree

Each talks to ``--control URL`` (or HOST:PORT, or a port alone; default: $XP_CONTROL_URL, else
http://127.0.0.1:8750) with the token in $XP_CONTROL_TOKEN (or the variable ``--token-env
NAME`` names); ``--json`` prints what the API answered, for scripts. Tables fit the terminal
(80 columns when it is not one).
Exit status: 0 done, 1 refused or unreachable (the message says why), 2 wrong arguments (a
--control that is no address).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from xml_pipeline._settings import defaults
from xml_pipeline.control.settings import ControlConfig
from xml_pipeline.control.source import trace_from_dict

__all__ = ["CONTROL_COMMANDS", "add_control_parsers", "control_command", "trace_command"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
_CONTROL = defaults(ControlConfig)  # where an organism's control plane is, unless told
DEFAULT_URL = "http://" + _CONTROL["listen"]
CONTROL_COMMANDS = ("ps", "top", "logs", "kill", "cancel", "stats")
_FOLLOW_SECONDS = 0.5  # how often `logs --follow` asks for new lines


class _Refused(Exception):
    """The control plane could not be reached, or said no: the message says why."""


class _Usage(Exception):
    """The arguments are wrong (exit status 2): the message says which and what to give."""


def control_url(given: str, where: str, httpx: Any) -> str:
    """The control plane's base URL from ``--control`` (or ``$XP_CONTROL_URL``): a URL, or
    ``HOST:PORT`` or ``PORT`` alone (``http://`` put in front; a port alone on 127.0.0.1).

    Raises:
        _Usage: it is neither (``where`` names the option or variable it came from).
    """
    url = given.strip()
    if "://" not in url:
        url = f"http://127.0.0.1:{url}" if url.isdigit() else f"http://{url}"
    try:
        parsed = httpx.URL(url)
        valid = (
            parsed.scheme in ("http", "https")
            and bool(parsed.host)
            and not url.partition("://")[2].partition("/")[0].endswith(":")  # no port after :
            and not any(c.isspace() for c in url)
        )
        parsed.port  # noqa: B018 - a port that is not a number raises here
    except (httpx.InvalidURL, ValueError):
        valid = False
    if not valid:
        raise _Usage(
            f"{where} {given!r} is not a control plane address: give a URL "
            "(http://127.0.0.1:8750), HOST:PORT (127.0.0.1:8750) or a port alone (8750)"
        )
    return url.rstrip("/")


def add_control_options(
    parser: argparse.ArgumentParser, json_help: str = "print the API's JSON answer"
) -> None:
    """``--control URL``, ``--token-env NAME`` and ``--json`` (``json_help`` says what it
    prints)."""
    parser.add_argument(
        "--control",
        metavar="URL",
        help="the control plane's URL, or HOST:PORT, or a port alone (default: "
        "$XP_CONTROL_URL, else " + DEFAULT_URL + ")",
    )
    parser.add_argument(
        "--token-env",
        metavar="NAME",
        default=_CONTROL["token_env"],
        help=f"the environment variable holding the token (default {_CONTROL['token_env']})",
    )
    parser.add_argument("--json", action="store_true", help=json_help)


def add_control_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The control plane's subcommands, added to ``organism``'s parser."""
    ps = sub.add_parser("ps", parents=[common], help="list the runs of a running organism")
    ps.add_argument("--listener", help="only runs of this listener")
    ps.add_argument("--status", help="only runs with this status (running, waiting, queued...)")
    top = sub.add_parser("top", parents=[common], help="the runs, refreshed until Ctrl-C")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (1)")
    top.add_argument("--count", type=int, help="stop after this many refreshes")
    logs = sub.add_parser("logs", parents=[common], help="a run's output lines")
    logs.add_argument("run", help="the run id (organism ps)")
    logs.add_argument("--follow", "-f", action="store_true", help="print new lines until it ends")
    kill = sub.add_parser("kill", parents=[common], help="cancel a running handler")
    kill.add_argument("run", help="the run id (organism ps)")
    cancel = sub.add_parser("cancel", parents=[common], help="end a conversation (cancelled)")
    cancel.add_argument("conversation", help="the conversation id")
    stats = sub.add_parser("stats", parents=[common], help="the organism's counters")
    for parser in (ps, logs, kill, cancel, stats):
        add_control_options(parser)
    add_control_options(
        top,
        json_help='one JSON line per refresh: {"at": epoch seconds, "organism": counters, '
        '"runs": [...]}',
    )


class _Client:
    """The control plane's JSON API over httpx (imported here: the ``[web]`` extra)."""

    def __init__(self, args: argparse.Namespace) -> None:
        try:
            import httpx

            logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
        except ImportError:
            raise _Refused(
                "talking to a control plane needs httpx; pip install 'xml-pipeline[web]'"
            ) from None
        given = args.control or os.environ.get("XP_CONTROL_URL") or DEFAULT_URL
        where = "--control" if args.control else "$XP_CONTROL_URL"
        self.url = control_url(given, where, httpx)
        token = os.environ.get(args.token_env)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._token_env = args.token_env
        self._token_sent = bool(token)
        self._httpx = httpx
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=10.0)

    def call(self, method: str, path: str, **params: Any) -> Any:
        """The JSON answer of ``method path``.

        Raises:
            _Refused: unreachable, 401, 404, 409, or another error status (its message).
        """
        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._client.request(method, path, params=query)
        except self._httpx.HTTPError as exc:
            raise _Refused(
                f"cannot reach the control plane at {self.url}: {exc}; is the organism running "
                "with a control: section (or organism run --control PORT), and is --control "
                "(or $XP_CONTROL_URL) its address?"
            ) from None
        if response.status_code == 401 and not self._token_sent:
            raise _Refused(
                f"the control plane at {self.url} needs a token and none was sent (401): "
                f"${self._token_env} is not set; set it to the token the organism was started "
                "with (or name another variable with --token-env NAME)"
            )
        if response.status_code == 401:
            raise _Refused(
                f"the control plane at {self.url} refused the token in ${self._token_env} "
                f"(401); set ${self._token_env} to the token the organism was started with"
            )
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text.strip()}
        if response.status_code >= 400:
            message = body.get("error", "") if isinstance(body, dict) else str(body)
            raise _Refused(f"{message} (HTTP {response.status_code})")
        return body

    def close(self) -> None:
        self._client.close()


def control_command(args: argparse.Namespace) -> int:
    """Run one of `CONTROL_COMMANDS`; returns the exit status."""
    return _with_client(args, _COMMANDS[args.command])


def trace_command(args: argparse.Namespace) -> int:
    """``organism trace CONVERSATION --control URL``: the hop tree the organism keeps."""
    return _with_client(args, _trace)


def _with_client(
    args: argparse.Namespace, command: Callable[[_Client, argparse.Namespace], int]
) -> int:
    """Run ``command`` with a client of ``--control``: a bad address or token setting exits
    `EXIT_CONFIG`, a refusal `EXIT_FAILED`, each said on stderr."""
    try:
        client = _Client(args)
    except _Usage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return command(client, args)
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_OK if args.command in ("top", "logs") else 130
    finally:
        client.close()


# -- the commands ------------------------------------------------------------------------------


def _ps(client: _Client, args: argparse.Namespace) -> int:
    found = client.call("GET", "/api/runs", listener=args.listener, status=args.status)
    if args.json:
        print(json.dumps(found, indent=2))
        return EXIT_OK
    print(render_runs(found["runs"], _width()))
    return EXIT_OK


def _top(client: _Client, args: argparse.Namespace) -> int:
    shown = 0
    while args.count is None or shown < args.count:
        runs = client.call("GET", "/api/runs")["runs"]
        stats = client.call("GET", "/api/stats")["organism"]
        if args.json:  # one JSON line per refresh, for scripts (jq -c, a log)
            print(json.dumps({"at": time.time(), "organism": stats, "runs": runs}), flush=True)
        else:
            _draw_top(client.url, stats, runs)
        shown += 1
        if args.count is None or shown < args.count:
            time.sleep(args.interval)
    return EXIT_OK


def _draw_top(url: str, stats: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """One refresh of `organism top`: the counters, then the runs' table (a terminal is
    cleared first)."""
    if sys.stdout.isatty():
        sys.stdout.write("\x1b[H\x1b[2J")  # home, clear screen
    counts = ", ".join(
        f"{stats.get(k, 0)} {k}" for k in ("conversations", "answered", "failed", "hops")
    )
    print(f"{url}  {time.strftime('%H:%M:%S')}  {counts}")
    print(render_runs(runs, _width()), flush=True)


def _logs(client: _Client, args: argparse.Namespace) -> int:
    printed = 0  # lines printed so far, counting those the run dropped before we saw them
    seen = False
    while True:
        try:
            run = client.call("GET", f"/api/runs/{args.run}")
        except _Refused:
            if seen:  # it ended and is no longer listed: its lines were printed
                return EXIT_OK
            raise
        seen = True
        if args.json and not args.follow:
            print(json.dumps(run, indent=2))
            return EXIT_OK
        lines = list(run.get("output", ()))
        total = int(run.get("output_dropped", 0)) + len(lines)
        if printed == 0 and run.get("output_dropped"):
            print(f"({run['output_dropped']} earlier lines dropped)", file=sys.stderr)
        for line in lines[max(0, len(lines) - (total - printed)) :] if total > printed else ():
            print(json.dumps(line) if args.json else line, flush=True)
        printed = total
        if not args.follow or run.get("status") not in ("queued", "running", "waiting"):
            return EXIT_OK
        time.sleep(_FOLLOW_SECONDS)


def _kill(client: _Client, args: argparse.Namespace) -> int:
    found = client.call("POST", f"/api/runs/{args.run}/cancel")
    print(json.dumps(found) if args.json else f"cancelled run {found['cancelled']}")
    return EXIT_OK


def _cancel(client: _Client, args: argparse.Namespace) -> int:
    found = client.call("POST", f"/api/conversations/{args.conversation}/cancel")
    print(json.dumps(found) if args.json else f"cancelled conversation {found['cancelled']}")
    return EXIT_OK


def _stats(client: _Client, args: argparse.Namespace) -> int:
    found = client.call("GET", "/api/stats")
    if args.json:
        print(json.dumps(found, indent=2))
        return EXIT_OK
    print(render_stats(found, _width()))
    return EXIT_OK


def _trace(client: _Client, args: argparse.Namespace) -> int:
    found = client.call("GET", f"/api/trace/{args.conversation}")
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print(trace_from_dict(found).render())
    return EXIT_OK


_COMMANDS: dict[str, Callable[[_Client, argparse.Namespace], int]] = {
    "ps": _ps,
    "top": _top,
    "logs": _logs,
    "kill": _kill,
    "cancel": _cancel,
    "stats": _stats,
}


# -- tables ------------------------------------------------------------------------------------


def _width() -> int:
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def _fit(cells: Sequence[str], widths: Sequence[int], width: int) -> str:
    """One row, each cell cut to its column, the last one to what is left of ``width``."""
    parts = [cell[:w].ljust(w) for cell, w in zip(cells[:-1], widths, strict=False)]
    line = " ".join(parts)
    rest = width - len(line) - 1
    last = cells[-1]
    if rest > 0:
        line += " " + (last if len(last) <= rest else last[: max(0, rest - 1)] + "…")
    return line.rstrip()[:width]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], width: int) -> str:
    rows = [list(r) for r in rows]
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header) - 1)
    ]
    widths = [min(w, 24) for w in widths]
    return "\n".join(_fit(r, widths, width) for r in [list(header), *rows])


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _status(run: dict[str, Any]) -> str:
    """A run's status, with its outcome when the status does not say it all
    (``failed:handler_error``, ``cancelled:ended``; ``completed``, ``cancelled`` alone), as the
    console shows it; PROGRESS keeps what the handler reported."""
    status = str(run.get("status", ""))
    outcome = run.get("outcome")
    if outcome and outcome not in ("ok", status):
        return f"{status}:{outcome}"
    return status


def render_runs(runs: list[dict[str, Any]], width: int = 80) -> str:
    """The runs as a table of ``width`` columns at most (``no runs`` when there are none).

    ``STATUS`` carries a finished run's outcome (``failed:timeout``); ``PROGRESS`` is what the
    handler last reported (``meta.progress``). ``PID`` is the organism process that owns the
    run (a run id ends with that process's instance id, ``r12@3fa9c1``): with several
    processes sharing a backend, it says which one to look at, or which one died when its
    runs are ``lost``.
    """
    if not runs:
        return "no runs"
    header = ["RUN", "PID", "LISTENER", "STATUS", "ELAPSED", "CONVERSATION", "PROGRESS"]
    rows = [
        [
            run.get("run_id") or "-",
            str(run.get("pid") or "-"),
            run.get("listener", ""),
            _status(run),
            _elapsed(run.get("elapsed_seconds")),
            str(run.get("conversation", ""))[:12],
            run.get("progress") or "",
        ]
        for run in runs
    ]
    return _table(header, rows, width)


def render_stats(found: dict[str, Any], width: int = 80) -> str:
    """`/api/stats` as text: the organism's counters, then a table per listener."""
    organism = found.get("organism", {})
    pairs = [f"{k}={v}" for k, v in organism.items()]
    lines, line = [], ""
    for pair in pairs:
        if line and len(line) + 1 + len(pair) > width:
            lines.append(line)
            line = ""
        line = f"{line} {pair}".strip()
    lines.append(line)
    listeners = found.get("listeners", {})
    if listeners:
        header = ["LISTENER", "HOPS", "FAILED", "RETRIES", "CIRCUIT"]
        rows = [
            [name, str(c.get("hops", 0)), str(c.get("failed", 0)), str(c.get("retries", 0)),
             str(c.get("circuit") or "-")]
            for name, c in sorted(listeners.items())
        ]  # fmt: skip
        lines += ["", _table(header, rows, width)]
    events = found.get("events")
    if events:
        lines += [
            "",
            f"event stream: {events['clients']} clients, {events['dropped']} events dropped, "
            f"{events['disconnected']} clients dropped for not reading",
        ]
    return "\n".join(lines)
