"""How CLI results are printed: ``-f table|json|value|csv`` and ``-c COLUMN``.

The conventions are those of OpenStack's ``openstack`` client (cliff): a list
is a table with a header row, one record is a Field/Value table, ``value``
prints bare values (one row per line, separated by spaces) for shell scripts,
``csv`` quotes as the csv module does, ``json`` prints the raw values (bytes,
integer vids) for programs.  Human units are used only in ``table`` and
``value``: sizes as B/KiB/MiB/GiB/TiB/PiB with up to three significant
decimals, vids in hex, times in UTC ISO 8601.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

FORMATS = ("table", "json", "value", "csv")
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(value: int | float | None) -> str:
    """``4194304`` -> ``4 MiB``; ``1.5 * 2**30`` -> ``1.5 GiB``; None -> ``-``."""
    if value is None:
        return "-"
    size = float(value)
    unit = 0
    while abs(size) >= 1024 and unit < len(_UNITS) - 1:
        size /= 1024
        unit += 1
    text = f"{size:.3f}".rstrip("0").rstrip(".") if unit else f"{int(size)}"
    return f"{text} {_UNITS[unit]}"


def human_time(seconds: int | float | None) -> str:
    if not seconds:
        return "-"
    moment = datetime.datetime.fromtimestamp(float(seconds), tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def hex_vid(vid: int | None) -> str:
    return "-" if vid is None else f"{int(vid):#x}"


# Column formatters by key, for table/value/csv output.
_HUMAN = {
    "size_bytes": human_size, "used_bytes": human_size, "shared_bytes": human_size,
    "object_size": human_size, "max_size": human_size,
    "vid": hex_vid, "parent_vid": lambda v: hex_vid(v) if v else "-",
    "created": human_time,
}


@dataclass
class Result:
    """What a command returns: a record, rows, a message or preformatted text.

    ``columns`` is the default column order of a table (keys of each row);
    ``headers`` names them; ``message`` is the one-line human answer printed in
    table/value form when there are no rows or record to show."""

    rows: list[dict[str, Any]] | None = None
    record: dict[str, Any] | None = None
    message: str | None = None
    text: str | None = None          # printed as is (XML, URI) unless -f json
    data: Any = None                 # what -f json prints (defaults to rows/record)
    columns: Sequence[str] = ()
    headers: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0


def _cell(key: str, value: Any, human: bool) -> str:
    if human and key in _HUMAN:
        return str(_HUMAN[key](value))
    if value is None:
        return "-" if human else ""
    if isinstance(value, bool):
        return "yes" if value and human else ("no" if human else str(value))
    if isinstance(value, float) and human:
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _pick(columns: Sequence[str], wanted: Sequence[str]) -> list[str]:
    if not wanted:
        return list(columns)
    return [c for c in wanted]


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    head = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    lines = [head.rstrip(),
             "  ".join("-" * w for w in widths)]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render(result: Result, fmt: str, wanted: Sequence[str], out: TextIO) -> None:
    """Print ``result`` in format ``fmt`` with only the ``wanted`` columns."""
    if fmt == "json":
        data = result.data
        if data is None:
            data = result.rows if result.rows is not None else result.record
        if data is None:
            data = {"message": result.message} if result.text is None else result.text
        if wanted and isinstance(data, dict):
            data = {k: data.get(k) for k in wanted}
        elif wanted and isinstance(data, list):
            data = [{k: r.get(k) for k in wanted} if isinstance(r, dict) else r for r in data]
        out.write(json.dumps(data, indent=2, sort_keys=not wanted, default=str) + "\n")
        return
    if result.text is not None:
        out.write(result.text.rstrip("\n") + "\n")
        return
    human = fmt in ("table", "value")
    if result.rows is not None:
        keys = _pick(result.columns or sorted({k for r in result.rows for k in r}), wanted)
        cells = [[_cell(k, r.get(k), human) for k in keys] for r in result.rows]
        headers = [result.headers.get(k, k.upper()) for k in keys]
        _emit(fmt, headers, cells, out, result.message)
        return
    if result.record is not None:
        keys = _pick(result.columns or list(result.record), wanted)
        if fmt == "table":
            cells = [[result.headers.get(k, k).lower(), _cell(k, result.record.get(k), True)]
                     for k in keys]
            out.write(table(cells, ["FIELD", "VALUE"]) + "\n")
        else:
            _emit(fmt, keys, [[_cell(k, result.record.get(k), human) for k in keys]], out,
                  None)
        return
    if result.message is not None:
        out.write(result.message + "\n")


def _emit(fmt: str, headers: list[str], cells: list[list[str]], out: TextIO,
          empty_message: str | None) -> None:
    if fmt == "value":
        for row in cells:
            out.write(" ".join(row) + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(cells)
        out.write(buf.getvalue())
    elif not cells and empty_message:
        out.write(empty_message + "\n")
    else:
        out.write(table(cells, headers) + "\n")
