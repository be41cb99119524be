"""Every test that needs a redis-server is marked ``redis``, so that ``-m "not redis"`` (the
README's way to leave Redis tests out where redis-server is not installed) leaves it out.

tests/redis_server.py fails a test that is not marked and asks for the private server (the
``redis_server``/``redis_url`` fixtures, or a `RedisServer` of its own); here, a copy of such
tests runs in a pytest of its own to show that the check holds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

ROOT = Path(__file__).resolve().parents[1]

TESTS = """
import pytest

from tests.redis_server import RedisServer, redis_server, redis_url  # noqa: F401


def test_fixture_unmarked(redis_url):
    pass


def test_own_server_unmarked():
    RedisServer()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request):
    return request.getfixturevalue("redis_url") if request.param == "redis" else ""


def test_parameter_marked(backend):
    pass


@pytest.mark.redis
def test_fixture_marked(redis_url):
    pass
"""


def outcomes_of(report: Path) -> dict[str, tuple[str, str]]:
    """Test name -> (outcome, message) from pytest's JUnit XML report, which, unlike the terminal
    summary, does not change with the terminal's width (CI's is wider and appends the reason)."""
    found: dict[str, tuple[str, str]] = {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = case.get("name", "")
        failed = case.find("failure")
        error = case.find("error")
        if error is not None:
            found[name] = ("ERROR", error.get("message", ""))
        elif failed is not None:
            found[name] = ("FAILED", failed.get("message", ""))
        elif case.find("skipped") is not None:
            found[name] = ("SKIPPED", "")
        else:
            found[name] = ("PASSED", "")
    return found


@pytest.mark.redis
def test_a_test_that_needs_redis_without_the_mark_fails_saying_so(tmp_path: Path) -> None:
    script = tmp_path / "test_marks.py"
    script.write_text(TESTS)
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    command += ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)]
    done = subprocess.run(
        [*command, f"--junitxml={report}", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = outcomes_of(report)
    assert {name: outcome for name, (outcome, _) in found.items()} == {
        "test_fixture_unmarked": "ERROR",  # at the fixture's setup
        "test_own_server_unmarked": "FAILED",
        "test_parameter_marked[memory]": "PASSED",
        "test_parameter_marked[redis]": "PASSED",
        "test_fixture_marked": "PASSED",
    }, done.stdout
    for name in ("test_fixture_unmarked", "test_own_server_unmarked"):
        assert "needs a redis-server but is not marked redis" in found[name][1], done.stdout

    deselected = subprocess.run(
        [*command, "-m", "not redis", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the marked ones (a test, a parameter) are left out; the unmarked ones fail as above
    assert "1 failed, 1 passed, 2 deselected, 1 error" in deselected.stdout, deselected.stdout
