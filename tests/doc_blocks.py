"""The fenced blocks of the project's Markdown files, and how tests run them as written.

Used by ``tests/test_readme.py`` (README.md) and ``tests/test_examples.py`` (each
``examples/*/README.md``). Blocks are found by their fences, never by line number, so a
document can change around them. Commands run in a copy of the repository made of its
git-tracked files (`copy_repository`), with this interpreter's ``python``, ``organism``,
``mypy`` and ``ruff`` first on ``PATH`` (`tool_env`).

A ``console`` block is a transcript: each line starting with ``$ `` is a command, run with
``/bin/sh``, and the lines up to the next command are what it prints (standard output and
standard error in one stream, as on a terminal). In those lines ``...`` stands for any text on
its line, and a line that is only ``...`` for any number of lines (none included). The command
must exit with status 0 (show a failure as ``$ command || echo "exit status $?"``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROOT",
    "TIMEOUT",
    "Block",
    "Step",
    "commands",
    "completed",
    "console_steps",
    "copy_repository",
    "markdown_blocks",
    "output_matches",
    "run",
    "run_shell",
    "tool_env",
]

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 100  # seconds for one block or command; the slowest (a benchmark's quick run) ~10
_FENCE = re.compile(r"^```(\w*)\s*$")
_FILE_LINE = re.compile(r"^`([\w./-]+)`:\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown file."""

    lang: str
    text: str
    line: int  # of the opening fence
    names_file: str | None  # the repository file named on the line before, if any
    file: str = "README.md"  # the Markdown file, relative to the repository root

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.lang})"


def markdown_blocks(path: Path) -> list[Block]:
    """Every fenced block of the Markdown file ``path``, in order."""
    blocks: list[Block] = []
    name = path.resolve().relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{name}:{start + 1}: a fenced block is never closed"
        before = [line for line in lines[:start] if line.strip()]
        named = _FILE_LINE.match(before[-1]) if before else None
        text = "\n".join(body) + "\n"
        blocks.append(Block(opening[1], text, start + 1, named[1] if named else None, name))
        i += 1
    return blocks


def commands(block: Block) -> Iterator[str]:
    """The command lines of a shell block (comments and blank lines left out)."""
    for line in block.text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


# -- a copy to run in, and the tools on PATH --------------------------------------------------


def copy_repository(copy: Path) -> Path:
    """Copy the repository to the new folder ``copy`` and return it: documents run there, so
    their commands may write files without touching the checkout."""
    tracked = _tracked_files()
    if tracked is not None:  # the project as committed: files a user left around stay out
        for name in tracked:
            source = ROOT / name
            if source.is_file():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy / name)
        return copy
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        ".ci-venv",
        "*_cache",
        "__pycache__",
        "*.egg-info",
        ".hypothesis",
        "results",
    )
    shutil.copytree(ROOT, copy, ignore=ignore)
    return copy


def _tracked_files() -> list[str] | None:
    """The repository's tracked files, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [name for name in done.stdout.decode().split("\0") if name]


def tool_env() -> dict[str, str]:
    """This environment with this interpreter's folder first on PATH, and no PYTHONPATH."""
    environ = dict(os.environ)
    environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ["PATH"]])
    environ.pop("PYTHONPATH", None)
    return environ


# -- running ----------------------------------------------------------------------------------


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (no shell) and capture its output, for at most `TIMEOUT` seconds."""
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def run_shell(
    command: str, cwd: Path, env: dict[str, str], *, one_stream: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run one command line with /bin/sh in a process group of its own; whatever it leaves
    running (``server &``) is killed when it exits, so no test leaves a process behind.

    ``one_stream``: standard error goes where standard output goes, in the order written, as
    on a terminal (the result's ``stderr`` is then empty).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out if one_stream else err,
            text=True,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=TIMEOUT)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, returncode, out.read(), err.read())


def completed(done: subprocess.CompletedProcess[str], what: str) -> str:
    """A failure message: what ran, its exit status and everything it printed."""
    return f"{what} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


# -- console transcripts ----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One command of a ``console`` block and the lines it is shown to print."""

    command: str
    expected: list[str]


def console_steps(block: Block) -> list[Step]:
    """The commands of a ``console`` block, each with the output shown under it."""
    steps: list[Step] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append(Step(line[2:].strip(), []))
        else:
            assert steps, f"{block}: a transcript starts with a '$ ' command line, not {line!r}"
            steps[-1].expected.append(line)
    return steps


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def output_matches(expected: list[str], printed: str) -> bool:
    """Whether ``printed`` is what the transcript shows, ``...`` standing for anything."""
    pattern: list[str] = []
    for line in _lines("\n".join(expected)):
        if line.strip() == "...":
            pattern.append(r"(?:[^\n]*\n)*?")  # any number of whole lines
        else:
            pattern.append("[^\n]*?".join(map(re.escape, line.split("..."))) + "\n")
    text = "".join(f"{line}\n" for line in _lines(printed))
    return re.fullmatch("".join(pattern), text) is not None
