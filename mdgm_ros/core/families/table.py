"""The survey's Table 1, generated from the family registry (``mdgm-ros families``)."""
from __future__ import annotations

import json
from typing import Any, Callable

from . import FAMILIES

COLUMNS = (("family", "family"), ("aggregated_inference", "aggregated inference"),
           ("missing_modalities", "missing modalities"), ("modality_specific_latents", "modality-specific"),
           ("end_to_end", "end-to-end"), ("scalability", "scalability"), ("stages", "stages"),
           ("equations", "survey eq."), ("reference", "reference"))


def table_rows() -> list[dict[str, Any]]:
    return [family.table_row() for family in FAMILIES.values()]


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "✓" if value else "×"
    if isinstance(value, (list, tuple)):
        return " → ".join(str(v) for v in value)
    return str(value).replace("|", "\\|") or "—"


def markdown_table(rows: list[dict[str, Any]] | None = None) -> str:
    rows = table_rows() if rows is None else rows
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    notes = [f"- **{row['family']}**: {row['notes']}" for row in rows if row.get("notes")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def families_command(as_json: bool = False, write: Callable[[str], Any] = print) -> int:
    """Print Table 1 (Markdown, or JSON with ``as_json``); returns the exit status."""
    if as_json:
        write(json.dumps({"families": table_rows()}, indent=2, ensure_ascii=False))
    else:
        write(markdown_table().rstrip("\n"))
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``families [--json]`` on an argparse subparsers object; the handler is ``args.func``."""
    parser = subparsers.add_parser("families", help="the model families and their Table 1 properties")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    parser.set_defaults(func=lambda args: families_command(args.json))
