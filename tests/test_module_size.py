"""The project's rule: no module over ~400 lines. A module that grows past it
is split along a seam (as bot/courier/lead_check.py came out of bot/courier/service.py)."""

from __future__ import annotations

from tests.harness import ROOT

MAX_LINES = 400
PACKAGES = ("bot", "handlers", "storage")


def test_no_module_is_over_400_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert sizes, "no modules found"
    over = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert over == {}, f"split these modules: {over}"
