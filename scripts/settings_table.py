"""Print (or, with --write, refresh) the settings table of docs/operations.md from common/settings.py.

The Settings class is the one place settings are defined; the table is generated from it and a unit test
checks the two agree. ``python -m scripts.settings_table --write`` rewrites docs/operations.md.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import msgspec

from common.settings import Settings, env_name

BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"
OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def _docstrings() -> dict[str, str]:
    tree = ast.parse(Path(sys.modules[Settings.__module__].__file__ or "").read_text())
    docs: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            for stmt, nxt in zip(node.body, node.body[1:], strict=False):
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                        docs[stmt.target.id] = " ".join(str(nxt.value.value).split()).replace("``", "`")
    return docs


def table() -> str:
    docs = _docstrings()
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for field in msgspec.structs.fields(Settings):
        default = field.default
        if field.name == "data_dir":
            text = "$XDG_DATA_HOME/premd or ~/.local/share/premd"
        elif default is None:
            text = "unset"
        elif isinstance(default, tuple):
            text = (" " if field.name == "registry_urls" else ",").join(default)
        else:
            text = str(default)
        rows.append(f"| `{env_name(field)}` | `{text}` | {docs.get(field.name, '')} |")
    return "\n".join(rows)


def refresh(readme: Path) -> bool:
    """Rewrite the table between the markers; True if the file changed."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} markers (the table lives in {OPERATIONS})")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = f"{head}{BEGIN}\n{table()}\n{END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        refresh(Path(sys.argv[2]) if len(sys.argv) > 2 else OPERATIONS)
    else:
        print(table())
