"""`passpush import FILE`: passes (and their devices) from a JSONL or CSV file, sent to a
running server in one ImportPasses call, 1,000 passes to a message, with a progress bar.

JSONL: one ImportEntry a line in proto3 JSON, e.g.
  {"pass": {"id": "p1", "templateId": "loyalty", "tags": ["gold"]},
   "devices": [{"deviceLibraryIdentifier": "d1", "pushToken": "a1b2..."}]}
CSV: a header row naming any of the columns in CSV_COLUMNS; `tags` and `group_tags` hold
tags separated by `|`; a row carries at most one device.

A line or row that cannot be read is reported with its number and not sent; the server's
refusals are reported with the line they came from.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import json_format

from passpush.console import ConnectionSettingError, add_connection, open_channel
from passpush.v1 import passes_pb2 as ppb

if TYPE_CHECKING:  # grpc and rich are imported when the command runs
    from rich.progress import Progress

PER_MESSAGE = 1_000  # the server's limit on ImportPassesRequest.entries
CSV_COLUMNS = (
    "id",
    "template_id",
    "external_id",
    "serial_number",
    "status",
    "tags",
    "group_tags",
    "google_object_id",
    "authentication_token",
    "device_library_identifier",
    "push_token",
)
_STATUSES = {"ACTIVE", "EXPIRED", "VOIDED"}
MAX_FAILURES_SHOWN = 20


@dataclass
class _Read:
    """What the file held: entries to send with their line numbers, and unreadable lines."""

    lines: list[int] = field(default_factory=list)  # the line of each entry sent, in order
    unreadable: list[tuple[int, str]] = field(default_factory=list)


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "import", help="import passes and their devices from a JSONL or CSV file"
    )
    add_connection(parser)
    parser.add_argument("file", type=Path, help="the file (.jsonl or .csv)")
    parser.add_argument(
        "--format", choices=["jsonl", "csv"], help="default: from the file's extension"
    )
    parser.add_argument("--template", default="", help="the template of passes that name none")


def entries(path: Path, form: str, template: str, read: _Read) -> Iterator[ppb.ImportEntry]:
    """The file's entries, each with its line noted in `read`; unreadable lines noted too."""
    with path.open(newline="", encoding="utf-8") as file:
        if form == "jsonl":
            numbered: Iterator[tuple[int, object]] = enumerate(file, start=1)
        else:
            rows = csv.DictReader(file)
            numbered = ((rows.line_num, row) for row in rows)
        for line, raw in numbered:
            try:
                entry = _from_json(raw) if form == "jsonl" else _from_row(raw)  # type: ignore[arg-type]
            except (ValueError, json_format.ParseError) as error:
                read.unreadable.append((line, str(error).splitlines()[0][:200]))
                continue
            if entry is None:
                continue  # a blank line
            pass_ = getattr(entry, "pass")
            if not pass_.template_id:
                pass_.template_id = template
            read.lines.append(line)
            yield entry


def _from_json(text: str) -> ppb.ImportEntry | None:
    if not text.strip():
        return None
    return json_format.Parse(text, ppb.ImportEntry())


def _from_row(row: dict[str, str]) -> ppb.ImportEntry:
    def value(name: str) -> str:
        return (row.get(name) or "").strip()

    status = value("status").upper()
    if status and status not in _STATUSES:
        raise ValueError(f"status must be one of {', '.join(sorted(_STATUSES))}")
    pass_ = ppb.Pass(
        id=value("id"),
        template_id=value("template_id"),
        external_id=value("external_id"),
        serial_number=value("serial_number"),
        status=ppb.PassStatus.Value(f"PASS_STATUS_{status}") if status else 0,  # type: ignore[arg-type]
        tags=[t for t in value("tags").split("|") if t],
        group_tags=[t for t in value("group_tags").split("|") if t],
        google_object_id=value("google_object_id"),
        authentication_token=value("authentication_token"),
    )
    entry = ppb.ImportEntry(**{"pass": pass_})  # type: ignore[arg-type]
    if value("device_library_identifier") or value("push_token"):
        entry.devices.add(
            device_library_identifier=value("device_library_identifier"),
            push_token=value("push_token"),
        )
    return entry


def _unknown_columns(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as file:
        header = next(csv.reader(file), [])
    return sorted(set(header) - set(CSV_COLUMNS))


def _count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


async def run(args: argparse.Namespace) -> int:
    """Imports the file; 0 when every pass was imported, 1 when some were not, 2 when the
    file or the call failed."""
    import grpc
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from passpush.console import cancel_on_ctrl_c
    from passpush.v1 import passes_pb2_grpc

    cancel_on_ctrl_c()
    if not args.key:
        print("passpush: give an API key with --key or PASSPUSH_API_KEY", file=sys.stderr)
        return 2
    metadata = (("authorization", f"Bearer {args.key}"),)
    path: Path = args.file
    form = args.format or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    try:
        total = _count_lines(path) - (1 if form == "csv" else 0)
        unknown = _unknown_columns(path) if form == "csv" else []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        print(f"passpush: cannot read {path}: {error}", file=sys.stderr)
        return 2
    if unknown:
        print(f"passpush: unknown CSV columns: {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        channel = open_channel(args)
    except ConnectionSettingError as error:
        print(f"passpush: {error}", file=sys.stderr)
        return 2
    read = _Read()
    columns = (
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} passes/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("import", total=max(total, 0), rate="-")

        async def messages() -> AsyncIterator[ppb.ImportPassesRequest]:
            chunk: list[ppb.ImportEntry] = []
            for entry in entries(path, form, args.template, read):
                chunk.append(entry)
                if len(chunk) == PER_MESSAGE:
                    yield ppb.ImportPassesRequest(entries=chunk)
                    _advance(progress, task, len(chunk))
                    chunk = []
            if chunk:
                yield ppb.ImportPassesRequest(entries=chunk)
                _advance(progress, task, len(chunk))

        async with channel:
            passes = passes_pb2_grpc.PassServiceStub(channel)
            try:
                summary = await passes.ImportPasses(messages(), metadata=metadata)
            except grpc.aio.AioRpcError as error:
                print(f"passpush: {error.code().name}: {error.details()}", file=sys.stderr)
                return 2
        progress.update(task, completed=len(read.lines) + len(read.unreadable))
    return _report(summary, read)


def _advance(progress: Progress, task: object, count: int) -> None:
    progress.advance(task, count)  # type: ignore[arg-type]
    speed = progress.tasks[0].speed
    progress.update(task, rate=f"{speed:,.0f}" if speed else "-")  # type: ignore[arg-type]


def _report(summary: ppb.ImportPassesResponse, read: _Read) -> int:
    print(
        f"{summary.created:,} created, {summary.updated:,} updated, "
        f"{summary.failed + len(read.unreadable):,} failed"
    )
    failures = [(line, f"cannot be read: {why}") for line, why in read.unreadable]
    failures += [(read.lines[f.index], f.message) for f in summary.failures]
    for line, why in sorted(failures)[:MAX_FAILURES_SHOWN]:
        print(f"  line {line}: {why}")
    shown = min(len(failures), MAX_FAILURES_SHOWN)
    left = summary.failed + len(read.unreadable) - shown
    if left > 0:
        print(f"  ... and {left:,} more")
    return 1 if summary.failed or read.unreadable else 0
