"""The report's blocks as Markdown, and as one self-contained HTML page rendered from that same Markdown by
markdown-it-py (raw HTML in the text is escaped, never passed through; charts are embedded as data: URIs)."""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from pathlib import Path

from .blocks import Callout, Figure, Report, Table, Text

_NUMERIC = re.compile(r"^(-|[+\-−]?[\d,]*\.?\d+%?( ± [\d.]+%?)?)$")


def _numeric_columns(t: Table) -> list[bool]:
    """Columns whose every cell is a number (right-aligned); the rest are text (left-aligned)."""
    return [i > 0 and all(_NUMERIC.match(r[i]) for r in t.rows) for i in range(len(t.header))]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def block_markdown(b, image_src: Callable[[Figure], str]) -> list[str]:
    """One block's Markdown lines (ending with a blank line); `image_src` gives a figure's image address."""
    if isinstance(b, Callout):
        return [f"> ⚠️ {b.text}", ">", *(f"> - {item}" for item in b.items), ""]
    if isinstance(b, Text):
        return [{"h1": "# ", "h2": "## ", "h3": "### ", "p": ""}[b.kind] + b.text, ""]
    if isinstance(b, Table):
        lines = [f"**{b.title}**", "",
                 "| " + " | ".join(map(_md_cell, b.header)) + " |",
                 "|" + "|".join("---:" if num else ":---" for num in _numeric_columns(b)) + "|",
                 *("| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows), ""]
        return lines + ([f"*{b.note}*", ""] if b.note else [])
    if isinstance(b, Figure):
        return [f"![{b.caption}]({image_src(b)})", "", f"*{b.caption}*", ""]
    raise TypeError(f"not a report block: {type(b).__name__}")


def to_markdown(rep: Report, out: Path) -> str:
    return "\n".join(line for b in rep.blocks for line in block_markdown(b, lambda f: f.path.relative_to(out).as_posix()))


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; max-width: 1240px;
       margin: 2em auto; padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.warn { background: #fff3cd; border: 2px solid #d9534f; border-radius: 6px; padding: .8em 1em; }
.warn blockquote { margin: 0; } .warn p { margin: 0 0 .4em; }
.scroll { overflow-x: auto; margin: .6em 0 .2em; } .scroll p { margin: .3em 0; }
.scroll p:last-child:not(:first-child) { font-size: .85em; color: #555; }
table { border-collapse: collapse; font-size: .86em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .55em; }
th { background: #f0f2f5; } td[style*="right"] { white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figure p:last-child { font-size: .9em; color: #444; }
code { background: #f4f4f4; padding: 0 .25em; border-radius: 3px; word-break: break-all; }
"""

# Each block kind's container: the warning stands out, wide tables scroll instead of widening the page.
_WRAP = {Callout: '<div class="warn" role="alert">{}</div>', Table: '<div class="scroll">{}</div>',
         Figure: "<figure>{}</figure>", Text: "{}"}


def _data_uri(f: Figure) -> str:
    return "data:image/png;base64," + base64.b64encode(f.path.read_bytes()).decode("ascii")


def to_html(rep: Report) -> str:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    title = next((b.text for b in rep.blocks if isinstance(b, Text) and b.kind == "h1"), "genrefusion report")
    parts = [_WRAP[type(b)].format(md.render("\n".join(block_markdown(b, _data_uri)))) for b in rep.blocks]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
