"""``organism dlq list|show|replay|purge FILE``, and ``organism run`` stopped by SIGTERM or
SIGINT accounting for every line it read (issue 12, items 6 and 7), run for real as
``python -m xml_pipeline`` against a private redis-server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import anyio
import pytest

from tests.redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from xml_pipeline import DeadLetter, Envelope, Organism

HANDLERS = """
from dataclasses import dataclass
from pathlib import Path

import anyio

from xml_pipeline import HandlerMetadata, HandlerResponse, payload

FIXED = Path(__file__).with_name("fixed")


@payload
@dataclass
class Job:
    n: int


@payload
@dataclass
class Done:
    n: int


async def work(job: Job, meta: HandlerMetadata) -> HandlerResponse:
    if job.n % 10 == 0 and not FIXED.exists():
        raise ValueError(f"job {job.n} is refused")
    if job.n % 10 in (1, 2) and not FIXED.exists():
        await anyio.sleep(30)  # still running when the organism stops
    else:
        await anyio.sleep(0.01)
    return HandlerResponse.respond(Done(n=job.n))
"""


def organism_file(folder: Path, url: str | None, *, worker: str = "worker") -> Path:
    """An organism of one listener (``worker``), with a Redis backend at ``url`` if given."""
    # not 'handlers': this process imports it too, and other tests import hello's 'handlers'
    (folder / "dlq_jobs.py").write_text(HANDLERS)
    backend = (
        f"backend:\n  type: redis\n  redis_url: {url}\n"
        f"  redis_prefix: 'cli-{uuid.uuid4().hex[:8]}:'\n"
        if url
        else ""
    )
    text = dedent(f"""\
        organism:
          name: jobs
          drain_timeout_seconds: 0.5
          ingress_limit: 4096
        listeners:
          - name: {worker}
            payload_class: dlq_jobs.Job
            handler: dlq_jobs.work
            max_concurrency: 4096
        """)
    file = folder / "organism.yaml"
    file.write_text(text + backend)
    return file


def organism(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xml_pipeline", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def envelope_n(letter: DeadLetter) -> int:
    """The job number a dead letter's envelope carries."""
    match = re.search(rb"<n>([0-9]+)</n>", letter.envelope)
    assert match, letter.envelope
    return int(match.group(1))


def send_jobs(file: Path, numbers: list[int]) -> None:
    """Dead letters made the way a service makes them: ``send`` with nobody awaiting."""

    async def main() -> None:
        org = Organism.from_yaml(file)
        job = org.listeners[0].payload_class
        async with org:
            for n in numbers:
                await org.send(org.listeners[0].name, job(n=n))
            await org.wait_idle()
            await org.dead_letters.list()  # written

    anyio.run(main)


def dead_letters(file: Path) -> list[DeadLetter]:
    async def main() -> list[DeadLetter]:
        return await Organism.from_yaml(file).dead_letters.list()

    return anyio.run(main)


@pytest.mark.redis
def test_list_show_replay_and_purge(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    file = organism_file(tmp_path, redis_url)
    send_jobs(file, [10, 20, 30])

    listed = organism("dlq", "list", str(file))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 3 and all(
        " handler_error  worker  attempts=1  worker  " in x for x in lines
    )
    assert "job 10 is refused" in lines[0]
    assert "3 listed; 3 kept for organism 'jobs', 0 dropped" in listed.stderr
    first_id = lines[0].split()[0]
    assert organism("dlq", "list", str(file), "--reason", "timeout").stdout == ""
    assert (
        len(organism("dlq", "list", str(file), "--since", "1h", "--limit", "2").stdout.splitlines())
        == 2
    )

    shown = organism("dlq", "show", str(file), first_id)
    assert shown.returncode == 0, shown.stderr
    assert f"id:           {first_id}" in shown.stdout and "chain:        worker" in shown.stdout
    envelope = shown.stdout.split("envelope:\n", 1)[1].strip()
    assert Envelope.from_bytes(envelope).to == "worker"

    unknown = organism("dlq", "show", str(file), "1-0")
    assert unknown.returncode == 1 and "no dead letter with id '1-0'" in unknown.stderr
    nothing = organism("dlq", "replay", str(file))
    assert nothing.returncode == 2 and "ids, a filter" in nothing.stderr
    named = organism("dlq", "replay", str(file), first_id, "7-7")
    assert named.returncode == 1 and "'7-7'" in named.stderr and "nothing was done" in named.stderr

    (tmp_path / "fixed").touch()
    replayed = organism("dlq", "replay", str(file), first_id)
    assert replayed.returncode == 0, replayed.stderr
    assert (
        replayed.stdout.startswith(f"{first_id} ") and "<Done><n>10</n></Done>" in replayed.stdout
    )
    assert sorted(envelope_n(d) for d in dead_letters(file)) == [20, 30]

    purged = organism("dlq", "purge", str(file), "--reason", "handler_error")
    assert purged.returncode == 0 and "purged 2 dead letters" in purged.stderr
    assert dead_letters(file) == []


@pytest.mark.redis
def test_replay_to_a_renamed_listener_fails_with_no_route_and_keeps_the_entry(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    file = organism_file(tmp_path, redis_url)
    send_jobs(file, [40])
    [letter] = dead_letters(file)
    prefix = re.search(r"redis_prefix: '(.*)'", file.read_text())
    assert prefix
    organism_file(tmp_path, redis_url, worker="renamed")
    file.write_text(
        re.sub(r"redis_prefix: '.*'", f"redis_prefix: '{prefix.group(1)}'", file.read_text())
    )
    done = organism("dlq", "replay", str(file), "--all")
    assert done.returncode == 1
    assert f"error (dead letter {letter.id}): not replayed, kept: [no_route]" in done.stderr
    assert "'worker'" in done.stderr
    assert dead_letters(file) == [letter]


def test_a_memory_organism_has_no_queue_for_another_process(tmp_path: Path) -> None:
    done = organism("dlq", "list", str(organism_file(tmp_path, None)))
    assert done.returncode == 2
    assert "backend type redis" in done.stderr and "Traceback" not in done.stderr


# -- organism run, stopped by a signal --------------------------------------------------------


class Running:
    """``organism run FILE`` as a subprocess, with its output collected as it comes."""

    def __init__(self, file: Path, *options: str, stdin: int = subprocess.PIPE) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xml_pipeline", *options, "run", str(file)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(stream, into), daemon=True)
            for stream, into in (
                (self.process.stdout, self.stdout),
                (self.process.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _collect(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line.decode())

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stderr):
            assert self.process.poll() is None, "".join(self.stderr)
            assert time.monotonic() < deadline, f"no {text!r} in {''.join(self.stderr)}"
            time.sleep(0.02)

    def write(self, data: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data.encode())
        self.process.stdin.flush()

    def wait_for_stdout(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.stdout) < count:
            assert self.process.poll() is None, "".join(self.stderr)
            assert time.monotonic() < deadline, "".join(self.stderr)
            time.sleep(0.02)

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(60)
        self.close()
        return code

    def close(self) -> None:
        for reader in self._readers:
            reader.join(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def kill_on_failure() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
        run.close()


@pytest.mark.redis
@pytest.mark.slow
def test_sigterm_under_load_accounts_for_every_line_read(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    kill_on_failure: list[Running],
) -> None:
    """About 1,000 lines a second for two seconds, then SIGTERM: every line the command read
    is answered on stdout, failed with a reason on stderr, or kept as a dead letter; the lines
    it did not read appear nowhere."""
    file = organism_file(tmp_path, redis_url)
    run = Running(file)
    kill_on_failure.append(run)
    run.wait_for("running with 1 listeners")
    written = 0
    started = time.monotonic()
    while time.monotonic() - started < 2.0:
        run.write("".join(f"@worker <Job><n>{written + i + 1}</n></Job>\n" for i in range(10)))
        written += 10
        time.sleep(0.01)
    code = run.stop(signal.SIGTERM)

    summary = [line for line in run.stderr if "stopped by SIGTERM after reading" in line]
    assert summary, "".join(run.stderr[-20:])
    read = int(re.search(r"after reading ([0-9]+) lines", summary[0]).group(1))  # type: ignore[union-attr]
    answered = set()
    for line in run.stdout:  # line N: <message ...><Done><n>N</n></Done></message>
        match = re.match(r"line ([0-9]+): <message .*<Done xmlns=\"\"><n>([0-9]+)</n></Done>", line)
        assert match and match.group(1) == match.group(2), line
        answered.add(int(match.group(1)))
    failed: dict[int, str] = {}
    for line in run.stderr:
        if match := re.match(r"line ([0-9]+): failed \[(\w+)\]", line):
            failed[int(match.group(1))] = match.group(2)
    kept = dead_letters(file)
    in_queue = {envelope_n(d) for d in kept}

    assert 100 <= read <= written
    accounted = answered | set(failed) | in_queue
    assert accounted == set(range(1, read + 1)), "every line read, and only those"
    assert not answered & set(failed)
    assert {failed[n] for n in range(10, read + 1, 10)} <= {"handler_error", "shutdown"}
    assert "handler_error" in failed.values()
    # what was in flight past the drain timeout: the requester was told, and it was kept
    assert in_queue and {d.reason for d in kept} == {"shutdown"}
    assert all(failed.get(n) == "shutdown" for n in in_queue)
    assert {n for n, reason in failed.items() if reason == "shutdown"} >= in_queue
    kept_line = f"{len(kept)} conversations kept as dead letters (organism dlq list {file})"
    assert kept_line in summary[0]
    assert code == 143  # 128 + SIGTERM


def test_sigint_stops_a_memory_organism_gracefully(
    tmp_path: Path, kill_on_failure: list[Running]
) -> None:
    run = Running(organism_file(tmp_path, None))
    kill_on_failure.append(run)
    run.wait_for("running with 1 listeners")
    run.write("@worker <Job><n>3</n></Job>\n@worker <Job><n>1</n></Job>\n")
    deadline = time.monotonic() + 30
    while not run.stdout:  # job 3 answered; job 1 runs for 30 s
        assert time.monotonic() < deadline
        time.sleep(0.02)
    code = run.stop(signal.SIGINT)
    stderr = "".join(run.stderr)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "line 2: failed [shutdown]" in stderr
    assert (
        "stopped by SIGINT after reading 2 lines: 1 answered, 1 failed (shutdown 1); "
        "1 conversations kept as dead letters (in this process's memory backend" in stderr
    )
    [answer] = run.stdout
    assert answer.startswith("line 1: <message ") and "<n>3</n></Done>" in answer


def test_a_line_read_in_part_when_sigterm_comes_is_reported_and_the_rest_left_unread(
    tmp_path: Path, kill_on_failure: list[Running]
) -> None:
    """The half of a line already taken from stdin fails with ``shutdown`` (it is not lost
    silently), and what comes after the signal stays in the pipe for whoever reads it next."""
    read_end, write_end = os.pipe()
    try:
        run = Running(organism_file(tmp_path, None), "--log-level", "debug", stdin=read_end)
        kill_on_failure.append(run)
        run.wait_for("running with 1 listeners")
        os.write(write_end, b"@worker <Job><n>3</n></Job>\n")
        run.wait_for_stdout(1)
        os.write(write_end, b"@worker <Job><n>5")  # no line end yet
        run.wait_for("read 17 bytes of input")
        run.process.send_signal(signal.SIGTERM)
        run.wait_for("SIGTERM: stopping: no more input is read")
        os.write(write_end, b"</n></Job>\n@worker <Job><n>7</n></Job>\n")
        code = run.process.wait(60)
        run.close()
        os.set_blocking(read_end, False)
        left = os.read(read_end, 1024)
    finally:
        os.close(read_end)
        os.close(write_end)
    stderr = "".join(run.stderr)
    assert code == 143, stderr
    assert "line 2: failed [shutdown] read only in part (its line end had not come)" in stderr
    assert "stopped by SIGTERM after reading 2 lines: 1 answered, 1 failed (shutdown 1)" in stderr
    assert left == b"</n></Job>\n@worker <Job><n>7</n></Job>\n", "nothing after the stop taken"


def test_stdin_from_a_file_and_an_overlong_line(tmp_path: Path) -> None:
    file = organism_file(tmp_path, None)
    lines = tmp_path / "lines.txt"
    lines.write_text(
        "@worker <Job><n>3</n></Job>\n@worker <Job><n>"
        + "4" * 300_000
        + "</n></Job>\n@worker <Job><n>5</n></Job>"
    )
    with lines.open("rb") as source:
        done = subprocess.run(
            [sys.executable, "-m", "xml_pipeline", "run", str(file)],
            stdin=source,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ},
        )
    assert done.returncode == 1
    answers = sorted(done.stdout.splitlines())
    assert [a.split(":")[0] for a in answers] == ["line 1", "line 3"]
    assert "<n>3</n></Done>" in answers[0] and "<n>5</n></Done>" in answers[1]
    assert "line 2: failed [too_large]" in done.stderr
    assert "done: 2 answered, 1 failed (too_large 1)" in done.stderr
