"""The web console's files (issue 13, item 6): shipped in the wheel as package data, and
nothing in them loaded from outside the package (no CDN, no web fonts)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from tests.doc_blocks import copy_repository

CONSOLE_FILES = ("index.html", "console.js", "console.css")
PACKAGE_DIR = "xml_pipeline/control/console"


def console_dir() -> Path:
    return Path(str(resources.files("xml_pipeline").joinpath("control", "console")))


def test_importlib_resources_finds_the_console_files() -> None:
    folder = resources.files("xml_pipeline").joinpath("control", "console")
    for name in CONSOLE_FILES:
        assert folder.joinpath(name).is_file(), name
    assert "<title>xml-pipeline console</title>" in folder.joinpath("index.html").read_text()


@pytest.mark.slow
def test_the_wheel_ships_the_console_files(tmp_path: Path) -> None:
    """Built from the git-tracked files, as a release would be: a file left out of
    ``[tool.setuptools.package-data]`` (or never ``git add``-ed) is missing here."""
    source = copy_repository(tmp_path / "source")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "dist").glob("xml_pipeline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in CONSOLE_FILES:
            assert f"{PACKAGE_DIR}/{name}" in names, sorted(names)
        shipped = archive.read(f"{PACKAGE_DIR}/console.js").decode()
    assert shipped == (console_dir() / "console.js").read_text()


def test_the_page_loads_only_files_of_the_package() -> None:
    page = (console_dir() / "index.html").read_text()
    loaded = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sorted(loaded) == ["console/console.css", "console/console.js"]
    for name in loaded:  # relative: the page works behind a proxy that adds a path prefix
        assert (console_dir() / name.removeprefix("console/")).is_file()


@pytest.mark.parametrize("name", CONSOLE_FILES)
def test_no_file_reaches_outside_the_package(name: str) -> None:
    text = (console_dir() / name).read_text()
    # the SVG namespace is a name, never fetched; anything else with a scheme or // would be
    outside = re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)
    assert [url for url in outside if url != "http://www.w3.org/2000/svg"] == []
    assert "@import" not in text and "@font-face" not in text
