"""Markdown tables: the one writer of `| a | b |` lines (evaluation tables, flow tables)."""
from __future__ import annotations

from collections.abc import Sequence


def markdown_lines(heads: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
                   ) -> list[str]:
    """Header, separator and one line per row of cells; `align` per column: "---" (default)
    or "---:" (right). A "|" inside a cell is escaped."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    seps = list(align) if align is not None else ["---"] * len(heads)
    return [line(heads), "|" + "|".join(seps) + "|", *(line(r) for r in rows)]
