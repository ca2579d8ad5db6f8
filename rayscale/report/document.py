"""The report as a document: headings, paragraphs, lists, tables, code and figures, in order.

``sections`` builds one ``Document`` from a ``Report``; ``to_markdown`` (here) and ``html`` render it,
so report.md and report.html show the same tables with the same columns. Text may carry two inline
marks, written as Markdown writes them: ``**strong**`` and ```code```; each renderer gives them its
own form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rayscale.tables import Table

__all__ = [
    "Block",
    "BulletList",
    "CodeBlock",
    "Document",
    "Figure",
    "Heading",
    "Paragraph",
    "Table",
    "inline_spans",
    "plain_text",
    "to_markdown",
]


@dataclass(frozen=True)
class Heading:
    level: int  # 2: a section, 3: a part of one
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class BulletList:
    items: list[str]


@dataclass(frozen=True)
class CodeBlock:
    text: str


@dataclass(frozen=True)
class Figure:
    file: str  # a PNG beside the report
    caption: str


Block = Heading | Paragraph | BulletList | Table | CodeBlock | Figure


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)


_MARKS = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*")


def inline_spans(text: str) -> list[tuple[str, str]]:
    """The text as ("text" | "code" | "strong", content) pieces; a strong piece may hold marks of its own."""
    spans, last = [], 0
    for m in _MARKS.finditer(text):
        if m.start() > last:
            spans.append(("text", text[last : m.start()]))
        spans.append(("code", m.group(1)) if m.group(1) is not None else ("strong", m.group(2)))
        last = m.end()
    if last < len(text):
        spans.append(("text", text[last:]))
    return spans


def plain_text(text: str) -> str:
    """The text without its inline marks."""
    return "".join(plain_text(content) if kind == "strong" else content for kind, content in inline_spans(text))


def _markdown_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "|".join("---" for _ in table.header) + "|"]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table.rows]


def _markdown_block(block: Block) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + block.text]
    if isinstance(block, Paragraph):
        return [block.text]
    if isinstance(block, BulletList):
        return [f"- {item}" for item in block.items]
    if isinstance(block, Table):
        return _markdown_table(block)
    if isinstance(block, CodeBlock):
        return ["```", block.text, "```"]
    return [f"![{block.caption}]({block.file})"]


def to_markdown(document: Document) -> str:
    """report.md: each block followed by a blank line."""
    lines = [f"# {document.title}", ""]
    for block in document.blocks:
        lines += _markdown_block(block) + [""]
    return "\n".join(lines).rstrip() + "\n"
