"""The pytest plugin installed with xml-pipeline: ``async def test_...`` runs with no marker.

pytest loads it through the ``pytest11`` entry point named ``xml_pipeline`` (``-p
no:xml_pipeline`` leaves it out; with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, enable it with
``-p xml_pipeline.pytest_plugin``). It takes only what no other plugin would: a coroutine test
function carrying none of the markers ``anyio``, ``asyncio`` or ``trio`` (on itself, its class
or its module), in a run where neither anyio's, pytest-asyncio's nor pytest-trio's auto mode
is on. Such a test gets the ``anyio`` marker, so anyio's plugin runs it, async fixtures
included, exactly as if the user had written the marker.

Which event loop: an ``anyio_backend`` fixture of the user's (in a ``conftest.py``, module or
class) is used as with any anyio test, e.g. ``("asyncio", {"use_uvloop": True})``. Without
one, a test this plugin takes runs on plain asyncio only, where anyio's own default would also
run it on trio when trio is installed (xml-pipeline runs on asyncio). Tests marked ``anyio``
by their author keep anyio's default.

Why at ``pytest_pycollect_makeitem`` and not later: anyio's plugin decides there, when the
item is made, whether a test uses the ``anyio_backend`` fixture; a marker added after
collection is seen only by anyio's ``pytest_collection_finish``, which remakes the item once
per installed backend and ignores the user's ``anyio_backend`` fixture.

The ini option ``xml_pipeline_async = false`` turns the plugin off.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Iterable
from typing import Any

import pytest

__all__: list[str] = []  # pytest finds the hooks by name; nothing here is for import

_INI = "xml_pipeline_async"
_ASYNC_MARKERS = ("anyio", "asyncio", "trio")
_ACTIVE = pytest.StashKey[bool]()
_ANYIO_PLUGIN = "anyio.pytest_plugin"  # the module of anyio's own anyio_backend fixture


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _INI,
        type="bool",
        default=True,
        help="xml-pipeline: run unmarked 'async def' tests through anyio on asyncio "
        "(default: true)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ACTIVE] = (
        bool(config.getini(_INI))
        and config.pluginmanager.has_plugin("anyio")
        and not _another_plugin_takes_every_async_test(config)
    )


def _another_plugin_takes_every_async_test(config: pytest.Config) -> bool:
    """Whether anyio, pytest-asyncio or pytest-trio runs in a mode taking every coroutine."""
    manager = config.pluginmanager

    def mode(name: str) -> object:
        return config.getoption(name, None) or config.getini(name)

    return (
        mode("anyio_mode") == "auto"
        or (manager.has_plugin("asyncio") and mode("asyncio_mode") == "auto")
        or (manager.has_plugin("trio") and bool(config.getini("trio_mode")))
    )


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, Any]:
    # a wrapper runs before every plain implementation, anyio's tryfirst one included
    if collector.config.stash.get(_ACTIVE, False) and _is_unmarked_coroutine_test(
        collector, name, obj
    ):
        pytest.mark.anyio(obj)
        if _anyio_default_backend_in_effect(collector):
            # direct parametrization stands in for a fixture of that name; module scope as
            # anyio's own fixture has, so module-scoped async fixtures work
            pytest.mark.parametrize("anyio_backend", ["asyncio"], scope="module")(obj)
    return (yield)


def _is_unmarked_coroutine_test(collector: pytest.Collector, name: str, obj: object) -> bool:
    if not isinstance(collector, pytest.Module | pytest.Class):
        return False
    if not collector.istestfunction(obj, name):
        return False
    hypothesis = getattr(obj, "hypothesis", None)  # @given wraps the coroutine function
    inner = getattr(hypothesis, "inner_test", obj)
    if not inspect.iscoroutinefunction(inner):
        return False
    if any(collector.get_closest_marker(marker) for marker in _ASYNC_MARKERS):
        return False
    return not any(mark_name in _ASYNC_MARKERS for mark_name in _own_marker_names(obj))


def _own_marker_names(obj: object) -> Iterable[str]:
    marks = getattr(obj, "pytestmark", ())
    if not isinstance(marks, list | tuple):
        marks = (marks,)
    return (getattr(mark, "name", "") for mark in marks)


def _anyio_default_backend_in_effect(collector: pytest.Collector) -> bool:
    """Whether the ``anyio_backend`` fixture the collector's tests would get is anyio's own
    default (and not one of the user's, which then decides the event loop).

    Reads pytest's fixture manager; if that ever changes shape, the answer is no (anyio's
    default then applies, as it does to tests marked by hand).
    """
    manager = collector.config.pluginmanager.get_plugin("funcmanage")
    try:
        fixturedefs = manager.getfixturedefs("anyio_backend", collector)  # type: ignore[union-attr]
        module = fixturedefs[-1].func.__module__
    except (AttributeError, IndexError, TypeError):
        return False
    return isinstance(module, str) and module == _ANYIO_PLUGIN
