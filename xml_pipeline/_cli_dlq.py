"""``organism dlq``: the dead-letter queue from the command line, thin over `DeadLetters`.

organism dlq list FILE [--reason R] [--listener L] [--since WHEN] [--limit N]
organism dlq show FILE ID
organism dlq replay FILE [ID ...] [--reason R] [--listener L] [--since WHEN] [--all]
organism dlq purge FILE [ID ...] [--reason R] [--listener L] [--since WHEN] [--all]

``WHEN`` is an ISO 8601 time (``2024-05-01T10:00``, local time unless it names a zone) or a
time ago (``90s``, ``15m``, ``2h``, ``7d``). ``replay`` boots the organism, replays, and prints
each outcome as it comes: answers on stdout, failures on stderr. Only backends that keep dead
letters beyond one process can be read from here (Redis, or a manager server with its own
address); for a memory organism the command says so.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import anyio

from xml_pipeline._config import load_config
from xml_pipeline._dead_letters import ReplayResult
from xml_pipeline._errors import UsageError
from xml_pipeline._organism import Organism
from xml_pipeline._runtime.outbox import Outcome
from xml_pipeline._settings import ANSWER_TIMEOUT_SECONDS
from xml_pipeline._wire.payloads import to_xml
from xml_pipeline.backends.base import DeadLetter

__all__ = ["add_dlq_parser", "dlq_command"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
_AGO = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(text: str) -> float:
    """``--since``: seconds since the epoch, from an ISO time or a time ago."""
    ago = _AGO.fullmatch(text.strip())
    if ago is not None:
        return time.time() - float(ago.group(1)) * _UNIT_SECONDS[ago.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO time (2024-05-01T10:00) nor a time ago (90s, 15m, 2h, 7d)"
        ) from None


def add_dlq_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``dlq`` subcommand and its own subcommands, added to ``organism``'s parser."""
    dlq = sub.add_parser("dlq", parents=[common], help="inspect, replay and purge dead letters")
    actions = dlq.add_subparsers(dest="action", required=True)

    def filters(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--reason", help="only this reason code (handler_error, timeout...)")
        parser.add_argument("--listener", help="only failures of this listener")
        parser.add_argument("--since", type=_when, help="kept since WHEN (ISO time, or 15m ago)")

    listing = actions.add_parser("list", parents=[common], help="one line per dead letter")
    listing.add_argument("file", help="path of organism.yaml")
    filters(listing)
    listing.add_argument("--limit", type=int, help="at most this many (the oldest first)")
    show = actions.add_parser("show", parents=[common], help="one dead letter, envelope and all")
    show.add_argument("file", help="path of organism.yaml")
    show.add_argument("id")
    for name, what in (
        ("replay", "inject dead letters again, as new conversations"),
        ("purge", "remove dead letters for good"),
    ):
        action = actions.add_parser(name, parents=[common], help=what)
        action.add_argument("file", help="path of organism.yaml")
        action.add_argument("ids", nargs="*", metavar="ID")
        filters(action)
        action.add_argument("--all", action="store_true", help="every dead letter")
        if name == "replay":
            action.add_argument(
                "--timeout",
                type=float,
                default=ANSWER_TIMEOUT_SECONDS,
                help="seconds to wait for the outcomes of the replayed conversations "
                f"({ANSWER_TIMEOUT_SECONDS:g})",
            )


async def dlq_command(args: argparse.Namespace) -> int:
    """Run ``organism dlq ACTION``; returns the exit status."""
    config = load_config(args.file)
    org = Organism.from_config(config)
    queue = org.dead_letters
    if not queue.durable:
        what: str = config.backend.type
        if what == "manager":
            what += " without manager_address"
        print(
            f"error: {config.file}: organism {org.name!r} (backend type {what}) keeps its dead "
            "letters only in the process that runs it: a new process has none to show. Use "
            "backend type redis (or manager with manager_address) to keep them for `organism "
            "dlq`, or read them in code with org.dead_letters while the organism runs",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        if args.action == "list":
            return await _list(org, args)
        if args.action == "show":
            return await _show(org, args.id)
        if not (args.ids or args.reason or args.listener or args.since is not None or args.all):
            print(
                f"error: dlq {args.action} needs dead letter ids, a filter (--reason, "
                "--listener, --since) or --all",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        selection: dict[str, Any] = {
            "ids": args.ids or None,
            "reason": args.reason,
            "listener": args.listener,
            "since": args.since,
        }
        if args.action == "purge":
            removed = await queue.purge(**selection)
            print(f"purged {removed} dead letters of organism {org.name!r}", file=sys.stderr)
            return EXIT_OK
        return await _replay(org, selection, args.timeout)
    except UsageError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED


async def _list(org: Organism, args: argparse.Namespace) -> int:
    letters = await org.dead_letters.list(
        reason=args.reason, listener=args.listener, since=args.since, limit=args.limit
    )
    for letter in letters:
        message = " ".join(letter.message.split())
        print(
            f"{letter.id}  {_iso(letter.time)}  {letter.reason}  {letter.listener or '-'}  "
            f"attempts={letter.attempts}  {' > '.join(letter.chain) or '-'}  {message}"
        )
    kept, dropped = await org.dead_letters.counts()
    print(
        f"{len(letters)} listed; {kept} kept for organism {org.name!r}, {dropped} dropped "
        "beyond dead_letters.max_entries",
        file=sys.stderr,
    )
    return EXIT_OK


async def _show(org: Organism, letter_id: str) -> int:
    letter = await org.dead_letters.get(letter_id)
    if letter is None:
        print(
            f"error: no dead letter with id {letter_id!r} in organism {org.name!r}; list the "
            "ids with `organism dlq list FILE`",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(_details(letter))
    return EXIT_OK


def _details(letter: DeadLetter) -> str:
    return "\n".join(
        [
            f"id:           {letter.id}",
            f"time:         {_iso(letter.time)}",
            f"conversation: {letter.conversation}",
            f"reason:       {letter.reason}",
            f"listener:     {letter.listener}",
            f"chain:        {' > '.join(letter.chain)}",
            f"attempts:     {letter.attempts}",
            f"message:      {letter.message}",
            "envelope:",
            letter.envelope.decode("utf-8", "replace"),
        ]
    )


async def _replay(org: Organism, selection: dict[str, Any], timeout: float) -> int:
    outcomes: dict[str, Outcome] = {}
    arrived = anyio.Event()
    async with org, anyio.create_task_group() as group:

        async def collect() -> None:
            nonlocal arrived
            async for outcome in org.outcomes():  # read from the start: the outbox is bounded
                outcomes[outcome.conversation] = outcome
                arrived.set()
                arrived = anyio.Event()

        group.start_soon(collect)
        results = await org.dead_letters.replay(**selection)
        started = {r.conversation: r for r in results if r.conversation is not None}
        with anyio.move_on_after(timeout):
            while not started.keys() <= outcomes.keys():
                await arrived.wait()
        group.cancel_scope.cancel()
    return _report(org, results, outcomes, timeout)


def _report(
    org: Organism, results: list[ReplayResult], outcomes: dict[str, Outcome], timeout: float
) -> int:
    failed = 0
    for result in results:
        where = f"dead letter {result.id}"
        outcome = outcomes.get(result.conversation or "")
        if result.error is not None:
            failed += 1
            print(f"error ({where}): not replayed, kept: {result.error}", file=sys.stderr)
        elif outcome is None:
            failed += 1
            print(
                f"error ({where}): conversation {result.conversation} had no outcome within "
                f"--timeout {timeout:g}s; it was stopped and kept as a new dead letter",
                file=sys.stderr,
            )
        elif outcome.error is not None:
            failed += 1
            print(
                f"error ({where}): conversation {result.conversation} failed again: "
                f"{outcome.error}; kept as a new dead letter",
                file=sys.stderr,
            )
        else:
            answer = to_xml(outcome.answer).decode()
            print(f"{result.id} {result.conversation} {outcome.answered_by}: {answer}")
    print(
        f"replayed {len(results)} dead letters of organism {org.name!r}: "
        f"{len(results) - failed} answered, {failed} not",
        file=sys.stderr,
    )
    return EXIT_FAILED if failed else EXIT_OK


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
