"""The README is a front door and docs/ the manual: the README stays short, names every file of the
package, and no link in either points at something missing or outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _pages() -> list[Path]:
    return [README, *DOCS]


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return LINK.findall(text)


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; at most {MAX_README_LINES}"


def test_readme_lists_every_package_file():
    text = README.read_text()
    package = ROOT / "lora_lab"
    files = sorted(p.relative_to(ROOT).as_posix() for p in package.rglob("*.py")
                   if "assets" not in p.relative_to(package).parts and "__pycache__" not in p.parts)
    assert files, "no package files found"
    missing = [f for f in files if f not in text]
    assert not missing, f"README.md's layout does not list: {', '.join(missing)}"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in _links(page):
        if SCHEME.match(target) or target.startswith("#"):
            continue  # a URL, or an anchor in the same page
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (page.parent / path).resolve()
        if not resolved.exists():
            broken.append(target)
        elif ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {', '.join(broken)}"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_pointer_outside_the_repository(page: Path):
    text = page.read_text()
    for needle in ("../shared", "DESIGN.md"):
        assert needle not in text, f"{page.relative_to(ROOT)} mentions {needle}"
