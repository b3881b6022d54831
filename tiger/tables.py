"""The one plain-text table formatter of the package (results, expert usage, routing agreement)."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, index: bool = True, rule: bool = False
) -> str:
    """Cells (already formatted strings) -> a plain-text table.

    Columns are two spaces apart and as wide as their widest cell; the first column holds the row names
    when ``index`` (left-aligned), every other column is right-aligned; ``rule`` draws a line of dashes
    under the header.
    """
    table = [list(header), *(list(row) for row in rows)]
    if any(len(row) != len(header) for row in table):
        raise ValueError(f"every row needs {len(header)} cells, got {[len(row) for row in table]}")
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            cell.ljust(width) if index and column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [line(table[0])]
    if rule:
        lines.append("-" * len(lines[0]))
    lines += [line(row) for row in table[1:]]
    return "\n".join(lines)
