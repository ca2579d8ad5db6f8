"""report.html: the report's ``Document`` as one self-contained page to open and pass around.

Everything it shows is inside the file: the style sheet, and each plot as a base64 PNG. It fetches
nothing and runs no script, so it reads the same offline, attached to a ticket or printed. Each
heading gets an anchor: sections are listed in a table of contents at the top, and a section's parts
at its head. Tables are
rendered as the document holds them (a column added to a section appears here unchanged), with
numeric columns right-aligned; a table wider than the window scrolls inside its own box.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from rayscale import __version__
from rayscale.report.document import (
    Block,
    BulletList,
    CodeBlock,
    Document,
    Figure,
    Heading,
    Paragraph,
    Table,
    inline_spans,
    plain_text,
)
from rayscale.tables import is_numeric_column

__all__ = ["render_html"]

_STYLE = """
:root {
  --ink: #1b1f24; --muted: #59636e; --rule: #d8dee4; --faint: #eef1f4; --zebra: #f8f9fb;
  --accent: #0a5bb5; --head: #f2f4f7; --code: #f4f5f7;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial,
        "Liberation Sans", "DejaVu Sans", sans-serif;
}
.page { max-width: 1360px; margin: 0 auto; padding: 32px 40px 56px; }
header.masthead { border-bottom: 3px solid var(--ink); padding-bottom: 14px; margin-bottom: 22px; }
.kicker { margin: 0; font-size: 12px; letter-spacing: .12em; text-transform: uppercase; color: var(--accent);
  font-weight: 600; }
h1 { margin: 4px 0 8px; font-size: 30px; line-height: 1.2; font-weight: 700; letter-spacing: -.01em; }
.intro p { margin: 0; color: var(--muted); font-size: 13px; max-width: none; }
.intro code { font-size: 12px; }
h2 { font-size: 21px; line-height: 1.3; margin: 40px 0 12px; padding-top: 14px; border-top: 1px solid var(--rule); }
h3 { font-size: 16px; line-height: 1.35; margin: 26px 0 8px; }
h2, h3 { scroll-margin-top: 12px; }
p { margin: 8px 0 12px; max-width: 92ch; }
ul { margin: 8px 0 14px; padding-left: 22px; max-width: 110ch; }
li { margin: 4px 0; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
strong { font-weight: 600; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", "DejaVu Sans Mono", monospace;
  font-size: .88em; background: var(--code); border-radius: 4px; padding: 1px 4px; overflow-wrap: anywhere; }
pre { background: var(--code); border: 1px solid var(--faint); border-radius: 6px; padding: 10px 12px; margin: 6px 0 16px;
  white-space: pre-wrap; overflow-wrap: anywhere; font-size: 13px; }
pre code { background: none; padding: 0; font-size: inherit; }
nav.toc { background: #fafbfc; border: 1px solid var(--rule); border-radius: 8px; padding: 12px 20px 14px; margin: 0 0 8px; }
nav.toc h2 { margin: 0 0 6px; padding: 0; border: 0; font-size: 12px; letter-spacing: .12em; text-transform: uppercase;
  color: var(--muted); }
nav.toc ol { columns: 3 220px; column-gap: 32px; margin: 0; padding-left: 22px; font-size: 14.5px; }
nav.toc li { break-inside: avoid; margin: 3px 0; }
nav.parts ul { list-style: none; margin: -4px 0 10px; padding: 0; font-size: 13px; line-height: 1.7; max-width: none; }
nav.parts li { display: inline-block; white-space: nowrap; }
nav.parts li:not(:last-child)::after { content: "·"; color: var(--muted); margin: 0 8px; }
.table-wrap { overflow-x: auto; margin: 8px 0 18px; border: 1px solid var(--rule); border-radius: 6px; }
table { border-collapse: collapse; min-width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 9px; text-align: left; vertical-align: top; border-bottom: 1px solid var(--faint); }
thead th { background: var(--head); font-weight: 600; color: #2f3740; border-bottom: 1px solid var(--rule);
  vertical-align: bottom; line-height: 1.3; }
tbody tr:nth-child(even) td { background: var(--zebra); }
tbody tr:last-child td { border-bottom: 0; }
th.num, td.num { text-align: right; }
td.num, td.short { white-space: nowrap; }
table.compact { font-size: 12.5px; }
table.compact th, table.compact td { padding: 5px 7px; }
figure { margin: 16px 0 28px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--faint); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
footer { margin-top: 48px; padding-top: 12px; border-top: 1px solid var(--rule); color: var(--muted); font-size: 12px; }
@media (max-width: 720px) { .page { padding: 20px 16px 40px; } h1 { font-size: 24px; } }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { font-size: 10pt; }
  .page { max-width: none; padding: 0; }
  a { color: inherit; }
  nav.toc { break-inside: avoid; }
  nav.parts { display: none; }
  h2 { break-before: auto; }
  h2, h3 { break-after: avoid; }
  .table-wrap { overflow: visible; border: 0; }
  table, table.compact { font-size: 7.5pt; }
  th, td, table.compact th, table.compact td { padding: 2px 4px; }
  thead { display: table-header-group; }
  tr, figure, pre { break-inside: avoid; }
  thead th, tbody tr:nth-child(even) td { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  figure img { max-height: 170mm; width: auto; }
}
"""


def _inline(text: str) -> str:
    """Escaped text with its inline marks as <code> and <strong>."""
    parts = []
    for kind, content in inline_spans(text):
        if kind == "code":
            parts.append(f"<code>{html.escape(content)}</code>")
        elif kind == "strong":
            parts.append(f"<strong>{_inline(content)}</strong>")
        else:
            parts.append(html.escape(content))
    return "".join(parts)


class _Anchors:
    """A unique, readable id per heading: 'summary', 'latency-at-each-load', 'setup-2'."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, text: str) -> str:
        base = re.sub(r"[^a-z0-9]+", "-", plain_text(text).lower()).strip("-") or "section"
        anchor, n = base, 1
        while anchor in self.used:
            n += 1
            anchor = f"{base}-{n}"
        self.used.add(anchor)
        return anchor


# A text cell this short stays on one line ("1 GPU(s)", "63% of 38,145 (batch 256)"); longer ones wrap.
_SHORT_CELL_CHARS = 28
# A table with this many columns is set smaller, so the report's widest tables fit a laptop's window.
_MANY_COLUMNS = 12


def _table(table: Table) -> str:
    numeric = [is_numeric_column(table, i) for i in range(len(table.header))]

    def cell(tag: str, text: str, is_number: bool) -> str:
        classes = "num" if is_number else ("short" if tag == "td" and len(plain_text(text)) <= _SHORT_CELL_CHARS else "")
        return f'<{tag} class="{classes}">{_inline(text)}</{tag}>' if classes else f"<{tag}>{_inline(text)}</{tag}>"

    head = "".join(cell("th", h, n) for h, n in zip(table.header, numeric, strict=True))
    body = "\n".join(
        "<tr>" + "".join(cell("td", c, n) for c, n in zip(row, numeric, strict=True)) + "</tr>" for row in table.rows
    )
    wide = ' class="compact"' if len(table.header) >= _MANY_COLUMNS else ""
    return f'<div class="table-wrap"><table{wide}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>'


def _figure(figure: Figure, figures: Mapping[str, bytes]) -> str:
    data = figures.get(figure.file)
    caption = f"<figcaption>{_inline(figure.caption)}</figcaption>"
    if data is None:
        return f"<figure><p>(plot {html.escape(figure.file)} not written)</p>{caption}</figure>"
    source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{source}" alt="{html.escape(figure.caption)}">{caption}</figure>'


def _block(block: Block, figures: Mapping[str, bytes], anchors: dict[int, str]) -> str:
    if isinstance(block, Heading):
        return f'<h{block.level} id="{anchors[id(block)]}">{_inline(block.text)}</h{block.level}>'
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, BulletList):
        return "<ul>\n" + "\n".join(f"<li>{_inline(item)}</li>" for item in block.items) + "\n</ul>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, CodeBlock):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    return _figure(block, figures)


@dataclass
class _Section:
    heading: Heading
    blocks: list[Block] = field(default_factory=list)

    @property
    def parts(self) -> list[Heading]:
        return [b for b in self.blocks if isinstance(b, Heading)]


def _sections(blocks: list[Block]) -> tuple[list[Block], list[_Section]]:
    """The blocks before the first section (the introduction), and each section with its blocks."""
    intro: list[Block] = []
    sections: list[_Section] = []
    for block in blocks:
        if isinstance(block, Heading) and block.level <= 2:
            sections.append(_Section(block))
        elif sections:
            sections[-1].blocks.append(block)
        else:
            intro.append(block)
    return intro, sections


def _link(heading: Heading, anchors: dict[int, str]) -> str:
    return f'<a href="#{anchors[id(heading)]}">{html.escape(plain_text(heading.text))}</a>'


def _contents(sections: list[_Section], anchors: dict[int, str]) -> str:
    """The table of contents: one entry per section (each section lists its own parts)."""
    items = "".join(f"<li>{_link(s.heading, anchors)}</li>" for s in sections)
    return f'<nav class="toc" aria-label="Contents">\n<h2>Contents</h2>\n<ol>{items}</ol>\n</nav>'


def _section(section: _Section, figures: Mapping[str, bytes], anchors: dict[int, str]) -> str:
    html_blocks = [_block(section.heading, figures, anchors)]
    if len(section.parts) > 1:
        links = "".join(f"<li>{_link(h, anchors)}</li>" for h in section.parts)
        html_blocks.append(f'<nav class="parts" aria-label="In this section"><ul>{links}</ul></nav>')
    html_blocks += [_block(b, figures, anchors) for b in section.blocks]
    return "<section>\n" + "\n".join(html_blocks) + "\n</section>"


def render_html(document: Document, figures: Mapping[str, bytes]) -> str:
    """The whole page; ``figures`` maps each plot's file name to its PNG bytes, embedded in the page."""
    intro, sections = _sections(document.blocks)
    unique = _Anchors()
    anchors = {id(b): unique(b.text) for b in document.blocks if isinstance(b, Heading)}
    title = html.escape(plain_text(document.title))
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta name="generator" content="rayscale {__version__}">',
            f"<title>{title}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            '<div class="page">',
            '<header class="masthead">',
            '<p class="kicker">rayscale report</p>',
            f"<h1>{_inline(document.title)}</h1>",
            *(f'<div class="intro">{_block(b, figures, anchors)}</div>' for b in intro),
            "</header>",
            _contents(sections, anchors),
            "<main>",
            *(_section(s, figures, anchors) for s in sections),
            "</main>",
            f"<footer>Written by rayscale {__version__} (<code>rayscale report</code>); the same figures are in "
            "report.md, report.json and summary.csv beside this file.</footer>",
            "</div>",
            "</body>",
            "</html>",
            "",
        ]
    )
