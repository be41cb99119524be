"""Scripts that start child processes without a main guard get one clear error, not a storm.

Each case runs a real script in a fresh interpreter (from a file, and fed on stdin), as a new
user would, and reads what it prints: worker processes started by "forkserver" or "spawn"
import the main script again, so a script that starts an organism with a cpu_bound listener,
a process pool or a state server at import time would start them again in every child.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

JOBS = """
from dataclasses import dataclass

from xml_pipeline import HandlerResponse, payload


@payload
@dataclass
class Job:
    n: int = 0


def double(msg, meta):
    return HandlerResponse.respond(Job(n=msg.n * 2))


async def echo(msg, meta):
    return HandlerResponse.respond(Job(n=msg.n * 2))
"""

BODIES = {
    "cpu_bound organism": """
        import asyncio
        from xml_pipeline import Listener, Organism
        from jobs import Job, double

        async def main():
            async with Organism([Listener("double", Job, double, cpu_bound=True)]) as org:
                print("answer", (await org.request("double", Job(n=21), timeout=30)).n)

        def run():
            asyncio.run(main())
    """,
    "process pool": """
        import asyncio
        from xml_pipeline._runtime.pool import ProcessPool

        async def main():
            async with ProcessPool(2) as pool:
                print("answer", await pool.run(abs, -42))

        def run():
            asyncio.run(main())
    """,
    "state server": """
        from xml_pipeline.backends import start_manager_server

        def run():
            with start_manager_server() as server:
                print("answer", server.address[1] > 0)
    """,
    "organism on its own state server": """
        import asyncio
        from xml_pipeline import Listener, Organism
        from xml_pipeline._config import BackendConfig
        from jobs import Job, echo

        async def main():
            org = Organism([Listener("echo", Job, echo)], backend=BackendConfig(type="manager"))
            async with org:
                print("answer", (await org.request("echo", Job(n=21), timeout=30)).n)

        def run():
            asyncio.run(main())
    """,
}
GUARDED = '\nif __name__ == "__main__":\n    run()\n'
UNGUARDED = "\nrun()\n"
GUARD = 'if __name__ == "__main__":'


def _run(tmp_path: Path, body: str, tail: str, *, stdin: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "jobs.py").write_text(JOBS)
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body) + tail)
    command = [sys.executable, "-"] if stdin else [sys.executable, str(script)]
    with script.open() as source:
        return subprocess.run(
            command,
            cwd=tmp_path,
            stdin=source if stdin else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=90,  # a hang fails the test instead of the suite
        )


def _assert_one_clear_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    err = done.stderr
    assert done.returncode != 0, err
    assert err.count("Traceback (most recent call last)") == 1, err
    assert "xml_pipeline._errors.UsageError" in err.splitlines()[-1], err
    for word in words:
        assert word in err, err
    for noise in ("leaked semaphore", "resource_tracker", "bootstrapping", "initializer"):
        assert noise not in err, err
    assert "answer" not in done.stdout


@pytest.mark.parametrize("what", list(BODIES))
def test_a_script_without_the_main_guard_gets_one_error_naming_it(
    tmp_path: Path, what: str
) -> None:
    done = _run(tmp_path, BODIES[what], UNGUARDED, stdin=False)
    _assert_one_clear_error(done, GUARD, str(tmp_path / "script.py"))


@pytest.mark.parametrize("what", list(BODIES))
def test_code_fed_on_stdin_gets_one_error_saying_to_use_a_file(tmp_path: Path, what: str) -> None:
    """Children cannot import code read from stdin at all, guard or not: say so at once."""
    done = _run(tmp_path, BODIES[what], UNGUARDED, stdin=True)
    _assert_one_clear_error(done, "standard input", "Save the program to a file", GUARD)


@pytest.mark.parametrize("what", list(BODIES))
def test_the_same_script_with_the_guard_works(tmp_path: Path, what: str) -> None:
    done = _run(tmp_path, BODIES[what], GUARDED, stdin=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() in (["answer", "42"], ["answer", "True"])
    assert "Traceback" not in done.stderr and "leaked" not in done.stderr, done.stderr
