"""The README and the guide in docs/: every relative link and #anchor resolves, and the
README stays a quick start (issue 14: at most a quarter of the 40-64 KB it had grown to)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = github_anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(re.findall(r'<a id="([^"]+)"></a>', text))
    return found


def links_of(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_the_pages_have_links() -> None:
    assert len(PAGES) > 10
    assert any("docs/CONFIGURATION.md" in link for link in links_of(ROOT / "README.md"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for link in links_of(page):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target}")
        elif anchor and target.suffix == ".md" and anchor not in anchors_of(target):
            broken.append(f"{link}: no heading #{anchor} in {target.name}")
    assert not broken, "\n".join(broken)


def test_github_anchor_matches_githubs_rules() -> None:
    assert github_anchor("Dovecot 2.4 and other passdbs: dovecot-appauth serve") == (
        "dovecot-24-and-other-passdbs-dovecot-appauth-serve")
    assert github_anchor("Migrating from dovecot_web_auth") == "migrating-from-dovecot_web_auth"
    assert github_anchor("Exit statuses and --debug") == "exit-statuses-and---debug"


def test_the_readme_is_a_quick_start() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10 * 1024
    for section in ("## Install", "## Dovecot configuration", "## A first app password",
                    "## Testing a login by hand", "## Documentation"):
        assert section in readme
    # the two commands run as written, as root or through sudo: the README shows no sudo
    assert "./examples/demo.sh" in readme and "./scripts/test.sh" in readme
    assert "sudo ./" not in readme


def test_the_command_reference_shows_the_current_help(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/COMMANDS.md pastes `dovecot-appauth --help`: a changed command list must update it."""
    from dovecot_appauth.cli.main import build_parser

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal width
    page = (ROOT / "docs" / "COMMANDS.md").read_text()
    block = page.split("$ dovecot-appauth --help\n", 1)[1].split("\n```", 1)[0]
    assert block == build_parser().format_help().rstrip("\n")
