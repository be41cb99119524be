"""Issue 13's "done when", end to end through the real command line: two ``organism run``
processes of one organism sharing a private redis-server, the first serving the control plane
(``--control 127.0.0.1:0``), the second none. From a third process, ``organism ps`` lists the
runs of both, ``organism kill`` stops a run in either (the second's through the backend) and
its caller is answered ``cancelled``, and the second process, killed with SIGKILL, has its
runs listed ``lost`` within ``runs.lost_after_seconds``.

README's "Two processes, one Redis" walkthrough shows these commands; keep them in step.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control.conftest import SLOW, TOKEN
from tests.redis_server import redis_server, redis_url

__all__ = ["redis_server", "redis_url"]

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]

HEARTBEAT, LOST_AFTER = 0.2, 1.0  # seconds: a short bound keeps the test short
# the job of input line N writes N output lines and says so in its progress: "wrote N lines"
JOB = "@worker <Job><seconds>600.0</seconds><lines>{n}</lines></Job>"


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "XP_CONTROL_TOKEN": TOKEN, **extra}


class Process:
    """``organism run FILE [ARGS]``: envelopes in on stdin, its stdout and stderr lines read."""

    def __init__(self, file: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xml_pipeline", "run", str(file), "--timeout", "600", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env(),
        )  # fmt: skip
        self.pid = self.process.pid
        self._stderr: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            self._stderr.put(line.rstrip("\n"))  # stdout too: an answer would be a failure here

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait_for(self, pattern: str, seconds: float = 30) -> str:
        """The first output line matching ``pattern`` (read so far or to come)."""
        until = time.monotonic() + seconds
        while True:
            for line in self.stderr:
                if re.search(pattern, line):
                    return line
            left = until - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} from {self.pid}: {self.stderr}"
            with contextlib.suppress(queue.Empty):
                self.stderr.append(self._stderr.get(timeout=left))

    def stop(self) -> None:
        """SIGTERM (it stops gracefully, its runs failing with ``shutdown``), else SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        for reader in self.readers:
            reader.join(timeout=10)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):  # stdin: a broken pipe once it died
                    pipe.close()


@pytest.fixture
def organism_file(tmp_path: Path, redis_url: str) -> Path:
    """The slow organism on the test's Redis (a prefix of its own), heartbeating fast."""
    shutil.copy(SLOW.parent / "slow_handlers.py", tmp_path / "slow_handlers.py")
    file = tmp_path / "organism.yaml"
    file.write_text(
        f"""\
organism:
  name: slow
  drain_timeout_seconds: 1.0
listeners:
  - name: worker
    payload_class: slow_handlers.Job
    handler: slow_handlers.work
    description: Works for as long as asked
    timeout_seconds: 600
backend:
  type: redis
  redis_url: {redis_url}
  redis_prefix: "xp-two-{uuid.uuid4().hex[:8]}:"
runs:
  heartbeat_seconds: {HEARTBEAT}
  lost_after_seconds: {LOST_AFTER}
"""
    )
    return file


@pytest.fixture
def two(organism_file: Path) -> Iterator[tuple[Process, Process, str]]:
    """The first process (serving the control plane), the second (none), and the URL."""
    first = Process(organism_file, "--control", "127.0.0.1:0")
    second: Process | None = None
    try:
        url = first.wait_for(r"control plane on http://").rpartition(" ")[2]
        second = Process(organism_file)
        second.wait_for(r"organism 'slow' running")
        yield first, second, url
    finally:
        first.stop()
        if second is not None:
            second.stop()


def organism(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``organism ARGS`` in a process of its own, the third shell: its control plane is
    ``$XP_CONTROL_URL`` (README's walkthrough serves it at the default URL instead)."""
    return subprocess.run(
        [sys.executable, "-m", "xml_pipeline", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env(XP_CONTROL_URL=url),
    )  # fmt: skip


def ps(url: str) -> list[dict[str, Any]]:
    done = organism(url, "ps", "--json")
    assert done.returncode == 0, done.stderr
    runs: list[dict[str, Any]] = json.loads(done.stdout)["runs"]
    return runs


def until(url: str, wanted: Callable[[list[dict[str, Any]]], bool], seconds: float) -> list[Any]:
    """``organism ps --json``'s runs once ``wanted`` holds of them (polled, with a deadline)."""
    deadline = time.monotonic() + seconds
    while True:
        runs = ps(url)
        if wanted(runs):
            return runs
        assert time.monotonic() < deadline, f"not so within {seconds}s: {runs}"
        time.sleep(0.1)


def of(runs: list[dict[str, Any]], pid: int) -> dict[str, dict[str, Any]]:
    """The runs of the process ``pid``, by their progress (``wrote N lines``: input line N)."""
    return {run["progress"]: run for run in runs if run["pid"] == pid}


def test_ps_lists_both_kill_stops_a_run_in_either_and_a_killed_process_is_lost(
    two: tuple[Process, Process, str],
) -> None:
    first, second, url = two
    for process in (first, second):
        process.send(JOB.format(n=1))
        process.send(JOB.format(n=2))

    # organism ps, from a third process: the runs of both, told apart by process and pid
    def four_running(runs: list[dict[str, Any]]) -> bool:
        return [run["status"] for run in runs].count("running") == 4

    runs = until(url, four_running, 30)
    mine, theirs = of(runs, first.pid), of(runs, second.pid)
    assert set(mine) == set(theirs) == {"wrote 1 lines", "wrote 2 lines"}
    assert len({run["process"] for run in mine.values()}) == 1
    assert len({run["process"] for run in theirs.values()}) == 1
    process_of = {first.pid: mine["wrote 1 lines"]["process"],
                  second.pid: theirs["wrote 1 lines"]["process"]}  # fmt: skip
    assert process_of[first.pid] != process_of[second.pid]
    for pid, found in ((first.pid, mine), (second.pid, theirs)):
        for run in found.values():
            assert run["run_id"].endswith(f"@{process_of[pid]}")
    table = organism(url, "ps")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = ["RUN", "PID", "LISTENER", "STATUS", "ELAPSED", "CONVERSATION", "PROGRESS"]
    assert lines[0].split() == header
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    for run in runs:
        assert rows[run["run_id"]][1:4] == [str(run["pid"]), "worker", "running"]
    assert all(len(line) <= 80 for line in lines)

    # organism kill: a run of the process serving the control plane, and one of the other
    for process, run in ((first, mine["wrote 1 lines"]), (second, theirs["wrote 1 lines"])):
        killed = organism(url, "kill", run["run_id"])
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.strip() == f"cancelled run {run['run_id']}"
        assert "[cancelled]" in process.wait_for(r"^line 1: failed")  # its caller's answer
    cancelled = {mine["wrote 1 lines"]["run_id"], theirs["wrote 1 lines"]["run_id"]}
    running = {mine["wrote 2 lines"]["run_id"], theirs["wrote 2 lines"]["run_id"]}

    def killed_two(runs: list[dict[str, Any]]) -> bool:
        status = {run["run_id"]: run["status"] for run in runs}
        return all(status.get(r) == "cancelled" for r in cancelled) and all(
            status.get(r) == "running" for r in running
        )

    runs = until(url, killed_two, 10)
    assert {run["outcome"] for run in runs if run["run_id"] in cancelled} == {"cancelled"}
    assert not any(re.match(r"^line 2: ", line) for line in first.stderr + second.stderr)

    # SIGKILL the second: its unfinished run is listed lost once its heartbeat is
    # lost_after_seconds old (the deadline's slack is for a loaded machine, not the bound)
    os.kill(second.pid, signal.SIGKILL)
    lost_run = theirs["wrote 2 lines"]["run_id"]

    def lost(runs: list[dict[str, Any]]) -> bool:
        return any(run["run_id"] == lost_run and run["status"] == "lost" for run in runs)

    runs = until(url, lost, LOST_AFTER + 10)
    status_of = {run["run_id"]: run for run in runs}
    status = {run["run_id"]: (run["status"], run["outcome"]) for run in runs}
    assert status[lost_run] == ("lost", "lost")
    assert status[theirs["wrote 1 lines"]["run_id"]] == ("cancelled", "cancelled")
    assert status[mine["wrote 2 lines"]["run_id"]] == ("running", "")
    table = organism(url, "ps", "--status", "lost")
    assert table.returncode == 0, table.stderr
    [row] = [line.split() for line in table.stdout.splitlines()[1:]]
    assert row[:4] == [lost_run, str(second.pid), "worker", "lost"]
    again = organism(url, "kill", lost_run)
    assert again.returncode == 1, again.stderr
    assert f"run {lost_run} is lost" in again.stderr and "(HTTP 409)" in again.stderr
    # a lost run's elapsed time is what it was when its process was last heard from
    later = {run["run_id"]: run for run in ps(url)}
    assert later[lost_run]["elapsed_seconds"] == status_of[lost_run]["elapsed_seconds"]
    assert later[mine["wrote 2 lines"]["run_id"]]["elapsed_seconds"] > 0

    # the first runs on; a run id without its process (r2, which the second has too) is
    # the run of the process serving the control plane
    short = mine["wrote 2 lines"]["run_id"].partition("@")[0]
    assert f"{short}@{process_of[second.pid]}" in status
    done = organism(url, "kill", short)
    assert done.returncode == 0, done.stderr
    assert "[cancelled]" in first.wait_for(r"^line 2: failed")
