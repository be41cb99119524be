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


@pytest.mark.redis
def test_a_test_that_needs_redis_without_the_mark_fails_saying_so(tmp_path: Path) -> None:
    script = tmp_path / "test_marks.py"
    script.write_text(TESTS)
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    command += ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), "-rA"]
    done = subprocess.run(
        [*command, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    out = done.stdout
    outcomes = {
        line.split("::")[-1]: line.split()[0]
        for line in out.splitlines()
        if line.split(" ")[0] in ("PASSED", "FAILED", "ERROR") and "::" in line
    }
    assert outcomes == {
        "test_fixture_unmarked": "ERROR",  # at the fixture's setup
        "test_own_server_unmarked": "FAILED",
        "test_parameter_marked[memory]": "PASSED",
        "test_parameter_marked[redis]": "PASSED",
        "test_fixture_marked": "PASSED",
    }, out
    assert out.count("needs a redis-server but is not marked redis") == 2, out

    deselected = subprocess.run(
        [*command, "-m", "not redis", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the marked ones (a test, a parameter) are left out; the unmarked ones fail as above
    assert "1 failed, 1 passed, 2 deselected, 1 error" in deselected.stdout, deselected.stdout
