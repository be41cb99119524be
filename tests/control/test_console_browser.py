"""The web console in a real browser (issue 13, item 6): headless chromium driven through
Debian's chromedriver (selenium, the W3C WebDriver protocol), against an organism whose
control plane listens on a free port of this test.

The organism's researcher runs until stopped, reporting progress; its caller, the planner,
awaits it with ``meta.call`` and answers with the reason of the failure it got. Every wait is
a `WebDriverWait` on a condition of the page (or of the organism), never a fixed sleep.

Without chromium or chromedriver the tests skip, saying why, unless ``CI`` or
``XP_REQUIRE_BROWSER`` is set (``.ci/run`` sets it): then they fail. With
``XP_UPDATE_SCREENSHOT=1`` the first test also writes ``docs/console.png`` (the README shows it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from xml_pipeline import (
    DeliveryError,
    ErrorReport,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    payload,
)
from xml_pipeline._runtime.runs import Run

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "console.png"
TOKEN_ENV = "XP_CONSOLE_TEST_TOKEN"
TOKEN = "s3cret-console-token"
WAIT_SECONDS = 30  # for a condition of the page: generous, for a loaded 2-core machine
LONG_SECONDS = 600  # the long runs' deadline: they end when stopped, or with the test
# the registry keeps finished runs (status cancelled) once it has `finished_at`; before that a
# cancelled run leaves the list
KEEPS_FINISHED_RUNS = "finished_at" in Run.__dataclass_fields__


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """One event loop: what is tested is the page, which is the same on both."""
    return ("asyncio", {})


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless chromium through chromedriver, closed after the test."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing = " and ".join(
            n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p
        )
        why = (
            f"{missing} not on PATH: the web console's browser test needs Debian's chromium and "
            "chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)"
        )
        if os.environ.get("CI") or os.environ.get("XP_REQUIRE_BROWSER"):
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI and containers run as root, where chromium's sandbox cannot start
        "--disable-dev-shm-usage",  # a container's small /dev/shm crashes tabs
        "--window-size=1440,900",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    # an explicit driver path: selenium never downloads one (Selenium Manager stays unused)
    session = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield session
    finally:
        session.quit()


# ---- the organism -------------------------------------------------------------------------


@payload
@dataclass
class Task:
    text: str = ""


@payload
@dataclass
class Report:
    text: str = ""


async def planner(msg: Task, meta: HandlerMetadata) -> HandlerResponse | None:
    if isinstance(msg, ErrorReport):
        return None
    meta.progress("asking the researcher")
    try:
        notes = await meta.call("researcher", msg)
    except DeliveryError as exc:
        return HandlerResponse.respond(Report(text=f"{exc.reason}:{exc.listener}"))
    meta.progress("asking the writer")
    return HandlerResponse.respond(await meta.call("writer", Task(text=notes.text)))


async def researcher(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
    if msg.text.startswith("deep"):
        for source in range(1, 4):
            meta.log(f"fetched source {source} of 10 for {msg.text!r}")
        meta.progress("read 3 of 10 sources")
        await anyio.sleep(LONG_SECONDS)  # until stopped
    meta.log(f"notes written for {msg.text!r}")
    return HandlerResponse.respond(Report(text=f"notes on {msg.text}"))


async def writer(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
    verdict = await meta.call("critic", msg)
    return HandlerResponse.respond(Report(text=f"draft from {msg.text} ({verdict.text})"))


async def critic(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
    if "broken" in msg.text:
        raise ValueError("no sources to check")
    return HandlerResponse.respond(Report(text="approved"))


def organism() -> Organism:
    return Organism(
        [
            Listener(
                "planner",
                Task,
                planner,
                peers=("researcher", "writer"),
                handles_errors=True,
                timeout_seconds=LONG_SECONDS,
            ),
            Listener(
                "researcher", Task, researcher, max_concurrency=4, timeout_seconds=LONG_SECONDS
            ),
            Listener("writer", Task, writer, peers=("critic",)),
            Listener("critic", Task, critic),
        ],
        name="research-desk",
        control={"listen": "127.0.0.1:0", "token_env": TOKEN_ENV},
    )


async def until(predicate: Callable[[], object], seconds: float = WAIT_SECONDS) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.01)


async def some_traffic(org: Organism) -> None:
    """A few answered conversations and a failed one: hops, counts on the edges."""
    for text in ("quarterly brief", "market notes", "release plan"):
        await org.request("planner", Task(text=text), timeout=WAIT_SECONDS)
    with pytest.raises(DeliveryError):
        await org.request("planner", Task(text="broken sources"), timeout=WAIT_SECONDS)


# ---- the page -----------------------------------------------------------------------------


def waiting(driver: WebDriver) -> WebDriverWait[WebDriver]:
    # the tables are drawn again on every update: an element found may go stale at once
    return WebDriverWait(driver, WAIT_SECONDS, ignored_exceptions=(StaleElementReferenceException,))


def run_rows(driver: WebDriver, listener: str, status: str) -> list[Any]:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#runs tbody tr[data-status="{status}"]')
    return [row for row in rows if row.find_elements(By.TAG_NAME, "td")[1].text == listener]


def banner(driver: WebDriver) -> str:
    box = driver.find_element(By.ID, "error")
    return "" if not box.is_displayed() else str(box.text)


def stop_a_research_run(driver: WebDriver, url: str) -> str:
    """Open the console, wait for both research runs with their progress, click Stop on the
    first; returns its run id."""
    driver.get(url)
    wait = waiting(driver)

    def two_with_progress(d: WebDriver) -> tuple[str, str] | None:
        rows = run_rows(d, "researcher", "running")
        said = [r.find_element(By.CSS_SELECTOR, ".progress").text for r in rows]
        if said != ["read 3 of 10 sources"] * 2:
            return None
        return rows[0].get_attribute("data-run-id"), rows[0].find_element(
            By.CSS_SELECTOR, ".output"
        ).text

    run_id, last_line = wait.until(two_with_progress)
    assert last_line.startswith("fetched source 3 of 10")
    assert "token" not in driver.current_url  # the fragment left the address bar
    assert banner(driver) == ""

    def click_stop(d: WebDriver) -> bool:
        row = d.find_element(By.CSS_SELECTOR, f'#runs tbody tr[data-run-id="{run_id}"]')
        row.find_element(By.CSS_SELECTOR, "button.stop").click()
        return True

    wait.until(click_stop)
    return run_id


def see_it_cancelled(driver: WebDriver, run_id: str) -> None:
    wait = waiting(driver)
    selector = f'#runs tbody tr[data-run-id="{run_id}"]'
    if KEEPS_FINISHED_RUNS:

        def statuses(d: WebDriver) -> list[str | None]:
            return [
                r.get_attribute("data-status") for r in d.find_elements(By.CSS_SELECTOR, selector)
            ]

        wait.until(lambda d: statuses(d) == ["cancelled"])
    else:
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, selector))
    # the hop log shows the researcher's hop ended cancelled; the other still runs
    wait.until(
        lambda d: any(
            row.find_elements(By.TAG_NAME, "td")[5].text == "cancelled"
            for row in d.find_elements(
                By.CSS_SELECTOR, '#hops tbody tr[data-listener="researcher"]'
            )
        )
    )
    wait.until(lambda d: len(run_rows(d, "researcher", "running")) == 1)
    assert banner(driver) == ""


def see_the_graph_counted(driver: WebDriver, stopped: int = 0) -> None:
    """The graph drawn with every listener, and live counts on the edges the traffic took."""
    wait = waiting(driver)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#graph .node")) == 4)

    def count(d: WebDriver, key: str) -> str:
        edge = d.find_element(By.CSS_SELECTOR, f'#graph .edge[data-key="{key}"]')
        return str(edge.find_element(By.CSS_SELECTOR, ".label text").text)

    # 4 conversations went planner -> writer -> critic (one failed there); the researcher
    # finished 4 quick hops, and the one stopped
    wait.until(lambda d: count(d, "writer → critic") == "4")
    wait.until(lambda d: count(d, "planner → writer") == "4")
    wait.until(lambda d: count(d, "planner → researcher") == str(4 + stopped))


def screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page, at the height it needs, once the hop log shows the latest traffic."""
    wait = waiting(driver)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hops tbody tr")) >= 12)
    wait.until(  # the counters polled after the traffic: 8 hops of the writer
        lambda d: (
            d.find_element(By.CSS_SELECTOR, '#stats tr[data-listener="writer"]')
            .find_elements(By.TAG_NAME, "td")[2]
            .text
            == "8"
        )
    )
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1440, int(height) + int(chrome))
    path.parent.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(path)), f"chromium wrote no screenshot to {path}"


# ---- the tests ----------------------------------------------------------------------------


async def test_stop_in_the_console_cancels_the_run_and_its_caller_gets_cancelled(
    browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with organism() as org:
        assert org.control_url is not None
        await some_traffic(org)
        answers: list[object] = []

        async def ask(text: str) -> None:
            answers.append(await org.request("planner", Task(text=text), timeout=300))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ask, "deep dive: battery suppliers")
            tasks.start_soon(ask, "deep dive: shipping costs")
            await until(lambda: len(org.runs(listener="researcher", status="running")) == 2)
            url = f"{org.control_url}/#token={TOKEN}"
            stopped = await anyio.to_thread.run_sync(stop_a_research_run, browser, url)

            await until(lambda: answers)
            assert answers == [Report(text="cancelled:researcher")]  # the caller got `cancelled`
            [still] = org.runs(listener="researcher", status="running")
            assert still.run_id != stopped
            await anyio.to_thread.run_sync(see_it_cancelled, browser, stopped)
            await anyio.to_thread.run_sync(see_the_graph_counted, browser, 1)
            if os.environ.get("XP_UPDATE_SCREENSHOT") == "1":
                await some_traffic(org)  # hops the page sees arrive, for the hop log
                await anyio.to_thread.run_sync(screenshot, browser, SCREENSHOT)
            tasks.cancel_scope.cancel()


async def test_a_wrong_token_says_401_and_the_form_connects_with_the_right_one(
    browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with organism() as org:
        await some_traffic(org)

        def wrong_then_right(driver: WebDriver) -> None:
            driver.get(f"{org.control_url}/#token=not-the-token")
            wait = waiting(driver)
            wait.until(lambda d: "401" in banner(d))
            assert "refused the token" in banner(driver)
            assert driver.find_element(By.ID, "connection").get_attribute("data-state") == "error"
            assert driver.find_elements(By.CSS_SELECTOR, "#runs tbody tr, #graph .node") == []
            # the graph panel says why it is empty, not "Loading the graph…"
            graph = driver.find_element(By.ID, "graph").text
            assert "needs the token" in graph and "401" in graph, graph
            # the hop log: empty since this page opened, though the counters have hops
            empty = driver.find_element(By.ID, "hops-empty").text
            assert "since this page opened" in empty, empty
            field = driver.find_element(By.ID, "token-input")
            field.clear()
            field.send_keys(TOKEN)
            driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
            wait.until(lambda d: banner(d) == "")
            wait.until(
                lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live"
            )
            see_the_graph_counted(driver)

        await anyio.to_thread.run_sync(wrong_then_right, browser)


async def test_without_a_token_the_page_asks_for_one(
    browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with organism() as org:

        def no_token(driver: WebDriver) -> None:
            driver.get(f"{org.control_url}/")
            waiting(driver).until(lambda d: "No token" in banner(d))
            assert "needs the token" in driver.find_element(By.ID, "graph").text

        await anyio.to_thread.run_sync(no_token, browser)


async def test_an_organism_that_stopped_is_reported_unreachable(
    browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with organism() as org:
        url = f"{org.control_url}/#token={TOKEN}"

        def live(driver: WebDriver) -> None:
            driver.get(url)
            waiting(driver).until(
                lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live"
            )

        await anyio.to_thread.run_sync(live, browser)

    def unreachable(driver: WebDriver) -> None:
        waiting(driver).until(lambda d: "Cannot reach the control API" in banner(d))

    await anyio.to_thread.run_sync(partial(unreachable, browser))


@payload
@dataclass
class Ball:
    n: int = 0


async def ping(msg: Ball, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(await meta.call("pong", msg))


async def pong(msg: Ball, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Ball(n=msg.n + 1))


HOSTILE = "solo<img/src=x/onerror=window.hacked=1>"  # a listener name: anything but whitespace


def graph_nodes(driver: WebDriver) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, "#graph .node"))


async def test_a_cyclic_graph_is_drawn_and_a_burst_of_hops_is_counted_and_capped(
    browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An arrow back (pong -> ping) is drawn inside the picture, as is a listener on its own
    whose name is markup (shown as text, never run); 300 hops arrive faster than they are
    drawn: every one counted, the newest 200 listed."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    listeners = [
        Listener("ping", Ball, ping, peers=("pong",)),
        Listener("pong", Ball, pong, peers=("ping",)),
        Listener(HOSTILE, Ball, pong),
    ]
    control = {"listen": "127.0.0.1:0", "token_env": TOKEN_ENV}
    async with Organism(listeners, name="rally", control=control) as org:

        def drawn(driver: WebDriver) -> None:
            driver.get(f"{org.control_url}/#token={TOKEN}")
            wait = waiting(driver)
            wait.until(
                lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live"
            )
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#graph .edge")) == 2)
            box = driver.execute_script(
                "const svg = document.querySelector('#graph svg');"
                "const v = svg.viewBox.baseVal;"
                "const shapes = [...svg.querySelectorAll('path, rect')].map((e) => e.getBBox());"
                "const corners = shapes.map((b) => [b.x, b.y, b.x + b.width, b.y + b.height]);"
                "return [v.width, v.height, corners];"
            )
            width, height, boxes = box
            for x1, y1, x2, y2 in boxes:  # every shape inside the picture, none NaN
                assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height, (box, x1, y1, x2, y2)
            names = [n.get_attribute("data-listener") for n in graph_nodes(driver)]
            assert names == ["ping", "pong", HOSTILE]
            wait.until(lambda d: HOSTILE in d.find_element(By.ID, "stats").text)
            assert driver.find_elements(By.TAG_NAME, "img") == []
            assert driver.execute_script("return window.hacked === undefined")

        await anyio.to_thread.run_sync(drawn, browser)
        async with anyio.create_task_group() as tasks:
            for n in range(150):
                tasks.start_soon(partial(org.request, "ping", Ball(n=n), timeout=WAIT_SECONDS))

        def counted(driver: WebDriver) -> None:
            wait = waiting(driver)
            wait.until(lambda d: d.find_element(By.ID, "hops-summary").text.startswith("300 since"))
            assert len(driver.find_elements(By.CSS_SELECTOR, "#hops tbody tr")) == 200
            label = '#graph .edge[data-key="ping → pong"] .label text'
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, label).text == "150")

        await anyio.to_thread.run_sync(counted, browser)


async def test_the_graph_counts_hops_made_before_the_page_opened_and_after_none_twice(
    browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arrows' counts are the server's, counted where hops finish whether or not anybody
    watched: 40 exchanges made before the page opens are on the arrow once it is live (the
    stream's first ``counts`` event), 60 more made while it watches come on top, none twice."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    listeners = [
        Listener("ping", Ball, ping, peers=("pong",)),
        Listener("pong", Ball, pong, peers=("ping",)),
    ]
    control = {"listen": "127.0.0.1:0", "token_env": TOKEN_ENV}
    label = '#graph .edge[data-key="ping → pong"] .label text'
    async with Organism(listeners, name="rally", control=control) as org:
        for n in range(40):
            await org.request("ping", Ball(n=n), timeout=WAIT_SECONDS)

        def before(driver: WebDriver) -> None:
            driver.get(f"{org.control_url}/#token={TOKEN}")
            wait = waiting(driver)
            wait.until(
                lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live"
            )
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, label).text == "40")

        await anyio.to_thread.run_sync(before, browser)
        async with anyio.create_task_group() as tasks:
            for n in range(60):
                tasks.start_soon(partial(org.request, "ping", Ball(n=n), timeout=WAIT_SECONDS))

        def after(driver: WebDriver) -> None:
            wait = waiting(driver)
            wait.until(lambda d: d.find_element(By.ID, "hops-summary").text.startswith("120 since"))
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, label).text == "100")

        await anyio.to_thread.run_sync(after, browser)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=org.control_url or "", headers=headers) as client:
            stats = (await client.get("/api/stats")).json()
            assert stats["edges"] == [
                {"from": "_external", "to": "ping", "hops": 100},
                {"from": "ping", "to": "pong", "hops": 100},
            ]
