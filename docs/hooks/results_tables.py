"""MkDocs hook: every table of numbers names its results file, and must equal it.

A table of measured numbers in the docs is followed by a line

    Source: `benchmarks/results/NAME.csv`

naming the committed file it comes from. At build time this hook reads that file and compares
it cell by cell with the table above the line (backticks ignored); a missing file or a
different cell is a warning, so ``mkdocs build --strict`` fails until the page and the file
agree again.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE = re.compile(r"^Source: `(benchmarks/results/[^`]+\.csv)`")

log = logging.getLogger("mkdocs.hooks.results_tables")


def table_cells(lines: list[str]) -> list[list[str]]:
    """Cells of a Markdown table (header and body rows; the rule row and backticks dropped)."""
    rows = []
    for line in lines:
        cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
        if not all(set(c) <= set(":- ") for c in cells):
            rows.append(cells)
    return rows


def table_above(lines: list[str], index: int) -> list[str]:
    """The table rows that end just above line ``index`` (blank lines between allowed)."""
    end = index
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    start = end
    while start > 0 and lines[start - 1].lstrip().startswith("|"):
        start -= 1
    return lines[start:end]


def check_page(markdown: str, root: Path = ROOT) -> list[str]:
    """Problems of the page's sourced tables: missing files, tables that differ from them."""
    problems = []
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        match = SOURCE.match(line.strip())
        if not match:
            continue
        path = root / match.group(1)
        table = table_above(lines, i)
        if not table:
            problems.append(f"no table above the line naming {match.group(1)}")
        elif not path.is_file():
            problems.append(f"{match.group(1)} does not exist")
        else:
            with path.open(newline="", encoding="utf-8") as f:
                expected = [[c.strip() for c in row] for row in csv.reader(f) if row]
            if table_cells(table) != expected:
                problems.append(f"the table above 'Source: {match.group(1)}' differs from the file")
    return problems


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """MkDocs event: check the page's sourced tables; the page itself is left as it is."""
    for problem in check_page(markdown):
        log.warning("%s: %s", page.file.src_uri, problem)
    return markdown
