"""The reference tables in docs/, generated from the code: every spec key (from the spec's
dataclasses) and every field of the JSON report (from its derived JSON Schema).

Each generated table sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``
in a docs page; the prose around it is written by hand. From the repository's root:

    python docs/reference.py           # rewrite the tables
    python docs/reference.py --check   # exit 1 if a table differs from the code's

The test suite runs the check (tests/test_docs.py).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradcheck_cli.results.report import report_json_schema  # noqa: E402
from gradcheck_cli.spec.schema import spec_keys  # noqa: E402


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def spec_table() -> list[str]:
    """Every spec key, its default and meaning, in file order."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, doc, default in spec_keys():
        shown = "" if default is None else f"`{json.dumps(default)}`"
        rows.append(f"| `{key}` | {shown} | {_cell(doc)} |")
    return rows


def _type(schema: dict[str, Any], plural: bool = False) -> str:
    """A schema as a reader names it: ``number`` (null where not finite), ``array of
    numbers``, ``object of numbers``, ``… or null``."""
    if "const" in schema:
        return f"`{schema['const']}`"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    options = schema.get("anyOf")
    if options is None:
        kind = schema.get("type", "")
        options = [{**schema, "type": k} for k in (kind if isinstance(kind, list) else [kind])]
    nullable = any(o.get("type") == "null" for o in options)
    names = []
    for o in options:
        k = o.get("type")
        if k == "null":
            continue
        if k == "array":
            names.append(f"array of {_type(o.get('items', {}), plural=True)}")
        elif k == "object" and isinstance(o.get("additionalProperties"), dict):
            names.append(f"object of {_type(o['additionalProperties'], plural=True)}")
        elif k:
            names.append(f"{k}s" if plural else k)
    text = " or ".join(names) or "any"
    if nullable and names == ["numbers" if plural else "number"]:
        return text + (" (null where not finite)" if not plural else " (null: not finite)")
    return text + (" or null" if nullable else "")


def report_table() -> list[str]:
    """Every field of the JSON report: its path, type and meaning."""
    rows = ["| field | type | meaning |", "| --- | --- | --- |"]

    def walk(schema: dict[str, Any], prefix: str) -> None:
        for name, prop in schema.get("properties", {}).items():
            path = f"{prefix}{name}"
            inner = prop
            for option in prop.get("anyOf", []):
                if option.get("type") != "null":
                    inner = option
            if inner.get("type") in ("array", ["array", "null"]) and \
                    "properties" in inner.get("items", {}):
                rows.append(f"| `{path}` | array of objects | "
                            f"{_cell(prop.get('description', ''))} |")
                walk(inner["items"], f"{path}[].")
            elif "properties" in inner:
                null = " or null" if "null" in str(inner.get("type")) else ""
                rows.append(f"| `{path}` | object{null} | {_cell(prop.get('description', ''))} |")
                walk(inner, f"{path}.")
            elif "properties" in inner.get("additionalProperties", {}):
                rows.append(f"| `{path}` | object of name → object | "
                            f"{_cell(prop.get('description', ''))} |")
                walk(inner["additionalProperties"], f"{path}.NAME.")
            else:
                rows.append(f"| `{path}` | {_type(prop)} | "
                            f"{_cell(prop.get('description', ''))} |")

    walk(report_json_schema(), "")
    return rows


TABLES: dict[str, tuple[Path, Callable[[], list[str]]]] = {
    "spec-keys": (ROOT / "docs" / "spec.md", spec_table),
    "report-fields": (ROOT / "docs" / "report.md", report_table),
}


def update(text: str, name: str, table: list[str]) -> str:
    pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end: {name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- generated: {name} --> … <!-- end: {name} --> markers")
    return pattern.sub(lambda m: m.group(1) + "\n".join(table) + "\n" + m.group(2), text)


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, (path, make) in TABLES.items():
        text = path.read_text()
        new = update(text, name, make())
        if new != text:
            stale.append(f"{path.relative_to(ROOT)} ({name})")
            if not check:
                path.write_text(new)
    if check and stale:
        print("out of date: " + ", ".join(stale) + "; run python docs/reference.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
