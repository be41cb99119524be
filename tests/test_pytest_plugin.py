"""xml_pipeline.pytest_plugin: a user's ``async def test_...`` runs with no marker.

Each test writes a user's test file into a fresh directory and runs pytest on it (pytester, in
this process); the plugin comes in through its entry point, as it does for users.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import xml_pipeline.pytest_plugin

pytest_plugins = ["pytester"]

HELLO = Path(__file__).resolve().parents[1] / "organisms" / "hello" / "organism.yaml"
# anyio runs a test marked anyio once per backend it finds installed (its own anyio_backend
# fixture): asyncio, and trio when importable; the test extra brings trio in (selenium needs it)
ANYIO_RUNS = 2 if importlib.util.find_spec("trio") is not None else 1

USER_TESTS = f"""
import asyncio

import pytest

from xml_pipeline.testing import Fake, run_organism


@pytest.fixture
async def org():
    async with run_organism({str(HELLO)!r}) as org:
        yield org


async def test_hello(org):
    from handlers import Greeting

    reply = await org.request("greeter", Greeting(name="Ada"))
    assert reply.message == "HELLO, ADA!"


async def test_a_fake_shouter():
    from handlers import Greeting, Reply, Shout

    shouter = Fake(answer=Shout(text="HI"))
    async with run_organism({str(HELLO)!r}, replace={{"shouter": shouter}}) as org:
        assert await org.request("greeter", Greeting(name="Ada")) == Reply(message="HI")
    shouter.assert_called_once_with(Shout(text="hello, Ada!"))


class TestInAClass:
    async def test_loop(self):
        print("\\nloop:", type(asyncio.get_running_loop()).__module__)


def test_sync():
    pass
"""


def test_the_plugin_is_registered_through_the_packages_entry_point(
    pytester: pytest.Pytester,
) -> None:
    config = pytester.parseconfig()
    plugin = config.pluginmanager.get_plugin("xml_pipeline")
    assert plugin is xml_pipeline.pytest_plugin
    dists = [d.project_name for p, d in config.pluginmanager.list_plugin_distinfo() if p is plugin]
    assert dists == ["xml-pipeline"]


def test_unmarked_async_tests_and_fixtures_run_on_plain_asyncio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-v", "-s")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*::test_hello[[]asyncio[]] PASSED*", "loop: asyncio.*"])


def test_a_failing_assertion_in_an_unmarked_async_test_fails_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        from xml_pipeline.testing import run_organism

        async def test_wrong_greeting():
            async with run_organism({str(HELLO)!r}) as org:
                from handlers import Greeting

                reply = await org.request("greeter", Greeting(name="Ada"))
                assert reply.message == "hello, Ada"
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: assert 'HELLO, ADA!' == 'hello, Ada'*"])


def test_an_anyio_backend_fixture_of_the_user_chooses_the_loop(pytester: pytest.Pytester) -> None:
    """As for any anyio test: here both loops, as this project's own conftest does."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(params=[("asyncio", {}), ("asyncio", {"use_uvloop": True})], ids=str)
        def anyio_backend(request):
            return request.param
        """
    )
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-v", "-s")
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["loop: asyncio.*", "loop: uvloop*"])


def test_tests_marked_for_another_plugin_are_left_to_it(pytester: pytest.Pytester) -> None:
    """Marked anyio: anyio runs it as usual. Marked asyncio or trio (by module, class or
    function): this plugin stays away, so without pytest-asyncio or pytest-trio installed
    pytest fails them as it fails any async test nobody runs."""
    pytester.makeini(
        """
        [pytest]
        markers =
            asyncio: pytest-asyncio's
            trio: pytest-trio's
        """
    )
    pytester.makepyfile(
        test_anyio="""
        import pytest

        @pytest.mark.anyio
        async def test_marked():
            pass
        """,
        test_others="""
        import pytest

        pytestmark = pytest.mark.trio

        async def test_module_marked():
            pass

        @pytest.mark.asyncio
        class TestClassMarked:
            async def test_it(self):
                pass
        """,
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=ANYIO_RUNS, failed=2)
    result.stdout.fnmatch_lines(["*test_anyio.py::test_marked[[]asyncio[]] PASSED*"])
    # Each of the two failures is pytest's own "nobody runs this" report (pytest 9.2 repeats
    # the text in the short summary, so count the reports by their section headers).
    for name in ("test_module_marked", "TestClassMarked.test_it"):
        result.stdout.fnmatch_lines(
            [f"_* {name} _*", "async def functions are not natively supported*"], consecutive=True
        )


@pytest.mark.parametrize(
    "switch",
    [["-o", "xml_pipeline_async=false"], ["-p", "no:xml_pipeline"]],
    ids=["ini-option", "plugin-disabled"],
)
def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester, switch: list[str]) -> None:
    pytester.makepyfile(
        """
        import pytest

        async def test_unmarked():
            pass

        @pytest.mark.anyio
        async def test_marked():
            pass
        """
    )
    result = pytester.runpytest(*switch)
    assert result.parseoutcomes().get("passed") == ANYIO_RUNS  # the marked one
    result.stdout.fnmatch_lines(["*test_unmarked*", "*async def functions are not natively*"])
