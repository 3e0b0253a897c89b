"""The documentation's relative links resolve: every `[text](path)` and `[text](path#anchor)` in
README.md, docs/*.md and benchmarks/README.md names a file that exists, and an anchor names a
heading of that file (issue 23)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md", *ROOT.glob("docs/*.md")])

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\n\s*\n).)+?\1", re.S)  # within one paragraph
# [text](target) or [text](target "title"); the text may hold inline code, not brackets.
INLINE_LINK = re.compile(r"!?\[[^\[\]]*\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The page without code blocks: a `# comment` there is no heading, a `[x](y)` no link."""
    return FENCE.sub("", text)


def links(text: str) -> list[str]:
    """The page's relative link targets, in order. Inline code becomes a placeholder first, so
    a link in code is no link while a link whose text is code (`[`x.py`](x.py)`) still is."""
    prose = CODE_SPAN.sub("code", _prose(text))
    found = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [t for t in found if t and not EXTERNAL.match(t)]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(_prose(text)):
        slug = anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(page: Path) -> list[str]:
    """The page's relative links whose file, or whose heading in a Markdown file, is missing."""
    broken = []
    for target in links(page.read_text()):
        path, _, fragment = target.partition("#")
        file = page.parent / path if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text()):
            broken.append(f"{target} (no heading #{fragment} in {file.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert page.exists()
    assert broken_links(page) == []


def test_pages_link_to_each_other():
    """The README's reading list reaches every docs page and the benchmarks page."""
    targets = {t.partition("#")[0] for t in links((ROOT / "README.md").read_text())}
    expected = {p.relative_to(ROOT).as_posix() for p in PAGES if p.name != "README.md"}
    assert expected | {"benchmarks/README.md"} <= targets


def test_a_broken_link_is_caught(tmp_path):
    """The checker itself: a missing file and a missing heading are both reported, and links
    inside code are not links."""
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: yes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-code-heading-yes) [ok](#top) [web](https://x.org/y)\n"
        "# Top\n[`missing`](missing.md) [gone](other.md#nowhere)\n"
        "```\n[not a link](nothere.md)\n```\n`[nor this](nothere.md)`\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#nowhere (no heading #nowhere in other.md)",
    ]
