"""``organism ps|logs|kill|cancel|stats|trace --control``: real ``organism`` processes against
an organism started by ``organism run --control``."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.control.conftest import SLOW, TOKEN


@dataclass
class Running:
    """``organism run SLOW --control 127.0.0.1:0``: its URL and what it wrote on stderr."""

    process: subprocess.Popen[str]
    url: str
    stderr: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait_for(self, pattern: str, seconds: float = 20) -> str:
        """The first stderr line matching ``pattern`` (read so far or to come)."""
        until = time.monotonic() + seconds
        while True:
            for line in self.seen:
                if re.search(pattern, line):
                    return line
            left = until - time.monotonic()
            assert left > 0, f"no stderr line matching {pattern!r} in {self.seen}"
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.stderr.get(timeout=left))


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "XP_CONTROL_TOKEN": TOKEN, **extra}


@pytest.fixture
def running() -> Iterator[Running]:
    process = subprocess.Popen(
        [sys.executable, "-m", "xml_pipeline", "run", str(SLOW), "--control", "127.0.0.1:0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env(),
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    started = Running(process, "", lines)
    found = started.wait_for(r"control plane on http://")
    started.url = found.rpartition(" ")[2]
    try:
        yield started
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def organism(running: Running, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xml_pipeline", *args, "--control", running.url],
        capture_output=True, text=True, timeout=60, check=False, env=env(**extra),
    )  # fmt: skip


def running_run(running: Running, listener: str) -> dict[str, object]:
    until = time.monotonic() + 20
    while time.monotonic() < until:
        done = organism(running, "ps", "--json", "--listener", listener)
        assert done.returncode == 0, done.stderr
        runs = [r for r in json.loads(done.stdout)["runs"] if r["status"] == "running"]
        if runs:
            return runs[0]  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no running run of {listener}")


JOB = "<Job><seconds>60.0</seconds><lines>3</lines></Job>"


def test_ps_logs_and_kill_a_run_its_caller_answered_cancelled(running: Running) -> None:
    running.send(f"@worker {JOB}")
    run = running_run(running, "worker")
    table = organism(running, "ps")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = ["RUN", "PID", "LISTENER", "STATUS", "ELAPSED", "CONVERSATION", "PROGRESS"]
    assert lines[0].split() == header
    assert lines[1].split()[:4] == [run["run_id"], str(running.process.pid), "worker", "running"]
    assert lines[1].endswith("wrote 3 lines")
    assert all(len(line) <= 80 for line in lines)
    logs = organism(running, "logs", str(run["run_id"]))
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["line 1 of 3", "line 2 of 3", "line 3 of 3"]
    killed = organism(running, "kill", str(run["run_id"]))
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.strip() == f"cancelled run {run['run_id']}"
    assert "[cancelled]" in running.wait_for(r"^line 1: failed")
    again = organism(running, "kill", str(run["run_id"]))
    assert again.returncode == 1
    assert "finished" in again.stderr and "HTTP 409" in again.stderr


def test_cancel_a_conversation_and_stats(running: Running) -> None:
    running.send(f"@boss {JOB}")
    run = running_run(running, "worker")
    done = organism(running, "cancel", str(run["conversation"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cancelled conversation {run['conversation']}"
    assert "[cancelled]" in running.wait_for(r"^line 1: failed")
    stats = organism(running, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    found = json.loads(stats.stdout)
    assert found["organism"]["conversations"] == 1 and found["organism"]["cancelled"] == 1
    text = organism(running, "stats")
    assert "LISTENER" in text.stdout and all(len(x) <= 80 for x in text.stdout.splitlines())


def test_unknown_ids_a_wrong_token_and_no_server_fail_with_status_1(running: Running) -> None:
    unknown = organism(running, "kill", "r4242")
    assert unknown.returncode == 1 and "r4242" in unknown.stderr and "404" in unknown.stderr
    gone = organism(running, "cancel", "c-nope")
    assert gone.returncode == 1 and "c-nope" in gone.stderr
    trace = organism(running, "trace", "c-nope")
    assert trace.returncode == 1 and "no trace of conversation 'c-nope'" in trace.stderr
    wrong = organism(running, "ps", XP_CONTROL_TOKEN="nope")
    assert wrong.returncode == 1
    assert "refused the token in $XP_CONTROL_TOKEN (401)" in wrong.stderr
    other = organism(running, "ps", "--token-env", "MY_TOKEN", MY_TOKEN=TOKEN, XP_CONTROL_TOKEN="")
    assert other.returncode == 0, other.stderr
    nowhere = subprocess.run(
        [sys.executable, "-m", "xml_pipeline", "ps", "--control", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, check=False, env=env(),
    )  # fmt: skip
    assert nowhere.returncode == 1 and "cannot reach the control plane" in nowhere.stderr


def test_trace_of_a_running_organism(running: Running) -> None:
    running.send("@boss <Job><seconds>0.0</seconds></Job>")
    answer = running.process.stdout.readline() if running.process.stdout else ""
    assert answer.startswith("line 1: ")
    conversation = re.search(r"<thread>([^<]+)</thread>", answer)
    assert conversation, answer
    # history is kept for open conversations only and tracing is off: the message says so
    done = organism(running, "trace", conversation[1])
    assert done.returncode == 1 and "tracing is off" in done.stderr


def test_run_control_port_in_use_fails_naming_the_port_and_the_flag_or_setting_used(
    running: Running, tmp_path: Path
) -> None:
    port = running.url.rpartition(":")[2]
    done = subprocess.run(
        [sys.executable, "-m", "xml_pipeline", "run", str(SLOW), "--control", port],
        input="", capture_output=True, text=True, timeout=60, check=False, env=env(),
    )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (port {port})" in done.stderr
    assert "give --control another one" in done.stderr and "control.listen" not in done.stderr
    # from the file's control.listen, the message names that setting
    in_file = tmp_path / "organism.yaml"
    in_file.write_text(SLOW.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    handlers = SLOW.parent / "slow_handlers.py"
    (tmp_path / handlers.name).write_text(handlers.read_text())
    from_file = subprocess.run(
        [sys.executable, "-m", "xml_pipeline", "run", str(in_file)],
        input="", capture_output=True, text=True, timeout=60, check=False, env=env(),
    )  # fmt: skip
    assert from_file.returncode == 1
    assert "set control.listen to another one" in from_file.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "xml_pipeline", "run", str(SLOW), "--control", "here:"],
        input="", capture_output=True, text=True, timeout=60, check=False, env=env(),
    )  # fmt: skip
    assert wrong.returncode == 2 and "--control here:: expected [HOST:]PORT" in wrong.stderr


def test_logs_follow_ends_with_the_run_and_top_ends_cleanly_on_ctrl_c(running: Running) -> None:
    running.send("@worker <Job><seconds>1.5</seconds><lines>2</lines></Job>")
    run = running_run(running, "worker")
    followed = organism(running, "logs", str(run["run_id"]), "--follow")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == ["line 1 of 2", "line 2 of 2"]
    assert running.process.stdout is not None
    assert running.process.stdout.readline().startswith("line 1: ")  # it ended: answered
    top = subprocess.Popen(
        [sys.executable, "-m", "xml_pipeline", "top", "--interval", "0.1", "--control",
         running.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    assert top.stdout is not None
    first = top.stdout.readline()  # a refresh was drawn
    assert running.url in first and "conversations" in first
    top.send_signal(signal.SIGINT)
    _, err = top.communicate(timeout=30)
    assert top.returncode == 0, err
    assert "Traceback" not in err


def test_top_json_prints_one_json_line_per_refresh(running: Running) -> None:
    done = organism(running, "top", "--json", "--count", "2", "--interval", "0.05")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    for line in lines:
        snapshot = json.loads(line)
        assert set(snapshot) == {"at", "organism", "runs"}
        assert "conversations" in snapshot["organism"] and snapshot["runs"] == []


def test_no_token_sent_is_named_as_such_with_the_variable_to_set(running: Running) -> None:
    """Not "refused the token" when none was sent: which variable to set, and --token-env."""
    none = organism(running, "ps", XP_CONTROL_TOKEN="")
    assert none.returncode == 1
    assert "needs a token and none was sent (401): $XP_CONTROL_TOKEN is not set" in none.stderr
    assert "--token-env" in none.stderr and "refused" not in none.stderr
    other = organism(running, "ps", "--token-env", "MY_TOKEN", XP_CONTROL_TOKEN=TOKEN)
    assert other.returncode == 1 and "$MY_TOKEN is not set" in other.stderr


def test_control_takes_host_port_or_a_port_alone_and_a_malformed_url_is_a_usage_error(
    running: Running,
) -> None:
    host_port = running.url.removeprefix("http://")
    port = host_port.rpartition(":")[2]
    for given in (host_port, port, running.url + "/"):
        done = subprocess.run(
            [sys.executable, "-m", "xml_pipeline", "ps", "--control", given],
            capture_output=True, text=True, timeout=60, check=False, env=env(),
        )  # fmt: skip
        assert done.returncode == 0, (given, done.stderr)
        assert done.stdout.strip() == "no runs"
    for wrong in ("ftp://127.0.0.1:1", "http://127.0.0.1:port", "127.0.0.1:", "not a url"):
        for command in (["ps"], ["trace", "abcdef12"]):
            done = subprocess.run(
                [sys.executable, "-m", "xml_pipeline", *command, "--control", wrong],
                capture_output=True, text=True, timeout=60, check=False, env=env(),
            )  # fmt: skip
            assert done.returncode == 2, (wrong, done.stderr)
            assert f"--control {wrong!r} is not a control plane address" in done.stderr
            assert "cannot reach" not in done.stderr
    from_env = subprocess.run(
        [sys.executable, "-m", "xml_pipeline", "ps"],
        capture_output=True, text=True, timeout=60, check=False,
        env=env(XP_CONTROL_URL="ftp://x"),
    )  # fmt: skip
    assert from_env.returncode == 2 and "$XP_CONTROL_URL 'ftp://x'" in from_env.stderr


def test_an_unknown_run_gets_one_message_from_every_command_pointing_to_ps(
    running: Running,
) -> None:
    said = set()
    for command in ("kill", "logs"):
        done = organism(running, command, "r999")
        assert done.returncode == 1
        said.add(done.stderr)
    [message] = said  # the same words from kill and logs
    assert "no run 'r999' in organism 'slow'" in message
    assert "list them with GET /api/runs or organism ps (HTTP 404)" in message
    assert "runs()" not in message


def test_a_finished_runs_outcome_is_in_its_status_and_progress_stays_progress(
    running: Running,
) -> None:
    running.send("@worker <Job><seconds>0</seconds><lines>1</lines><fail>true</fail></Job>")
    assert "[handler_error]" in running.wait_for(r"^line 1: failed")
    running.send("@worker <Job><seconds>0</seconds><lines>2</lines></Job>")
    assert running.process.stdout is not None
    assert running.process.stdout.readline().startswith("line 2: ")
    table = organism(running, "ps")
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    statuses = {row[3]: " ".join(row[6:]) for row in rows.values()}
    assert statuses == {"failed:handler_error": "wrote 1 lines", "completed": "wrote 2 lines"}
