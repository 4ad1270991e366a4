"""How the command line prints: tables and progress on a terminal, plain lines when piped, JSON with ``--json``.

Colours only on a terminal and never with ``NO_COLOR`` set (rich decides both); errors are one line on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 240
"""Width of tables written to a pipe (rich would assume 80 and wrap)."""


class Ui:
    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode
        self.out = Console(highlight=False, soft_wrap=False)
        if not self.out.is_terminal:
            self.out = Console(highlight=False, width=PIPE_WIDTH)
        self.err = Console(stderr=True, highlight=False)

    @property
    def tty(self) -> bool:
        """Live output (progress bars, spinners) only on a terminal and never with --json."""
        return self.out.is_terminal and not self.json

    def emit(self, value: Any) -> None:
        """One JSON document on one line (``--json``)."""
        sys.stdout.write(json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def line(self, text: str, style: str | None = None) -> None:
        self.out.print(text, style=style, markup=False)

    def note(self, text: str) -> None:
        """A side remark for people (on stderr, so that stdout stays what was asked for)."""
        self.err.print(text, style="dim", markup=False)

    def error(self, message: str, code: str | None = None) -> None:
        if self.json:
            sys.stderr.write(json.dumps({"error": message, "code": code}) + "\n")
        else:
            self.err.print(f"premd: {message}", style="red", markup=False, soft_wrap=True)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*("-" if cell is None or cell == "" else str(cell) for cell in row))
        self.out.print(table)

    def fields(self, pairs: Iterable[tuple[str, object]]) -> None:
        """``key  value`` lines, keys aligned."""
        table = Table(box=None, pad_edge=False, show_header=False, show_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in pairs:
            table.add_row(key, "-" if value is None or value == "" else str(value))
        self.out.print(table)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
