"""The README stays a newcomer's path, and the documentation's links lead somewhere.

The README is short, names the two commands, shows one form of the bridge's
command, and links every page of docs/; every relative link in it and in docs/
points at a file that exists, and at a heading that exists when it names one,
and every path of ours they name in backticks (`bot/...`, `storage/...`) exists.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.harness import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 200

# [text](target): the target up to the closing parenthesis (none of ours holds one).
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# `bot/app.py`, `storage/migrations/`: a path in the repository, named in prose.
_PATH = re.compile(r"`((?:bot|handlers|storage|tests|bench|examples|docs)/[^`\s]*)`")


def _prose(path: Path) -> str:
    """The page without its fenced code blocks, where brackets are code, not links."""
    return _FENCE.sub("", path.read_text(encoding="utf-8"))


def _relative_links(path: Path) -> list[str]:
    return [
        target
        for target in _LINK.findall(_prose(path))
        if not re.match(r"^[a-z]+:", target)  # https:, mailto:
    ]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", _prose(path), re.MULTILINE)
    return {_anchor(heading) for heading in headings}


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_readme_names_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make run" in text
    assert "make test" in text


def test_one_form_of_the_command() -> None:
    # `joinbridge <command>` throughout; `python -m bot` is only the entry the
    # Dockerfile and the systemd unit use, never a command to type.
    assert "python -m bot" not in README.read_text(encoding="utf-8")
    assert "joinbridge doctor" in README.read_text(encoding="utf-8")
    for page in DOCS:
        typed = re.findall(r"python -m bot [a-z]", page.read_text(encoding="utf-8"))
        assert not typed, f"{page.name} shows `python -m bot <command>`"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_point_at_files_and_headings(page: Path) -> None:
    links = _relative_links(page)
    for link in links:
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: {link} points at a missing file"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page.name}: {link}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_paths_named_in_backticks_exist(page: Path) -> None:
    named = _PATH.findall(_prose(page))
    # `bot/cli/<command>.py`, `tests/unit/<package>/`, `bot/…`: a pattern, not a path.
    paths = [path for path in named if "<" not in path and "…" not in path]
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing, f"{page.name} names missing paths: {missing}"


def test_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / link.partition("#")[0]).resolve() for link in _relative_links(README)
    }
    assert DOCS, "docs/ holds no page"
    missing = [page.name for page in DOCS if page.resolve() not in linked]
    assert not missing, f"README.md links no {missing}"


def test_the_license_is_mit_and_said_so() -> None:
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 The Joinbridge authors" in license_text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT"
    assert "MIT" in README.read_text(encoding="utf-8")
    assert "LICENSE" in _relative_links(README)
