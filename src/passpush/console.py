"""`passpush send`, `watch` and `failures`: a gRPC client of a running server, with a live
progress bar of a ticket (WatchTicket) and a final summary, or its failed deliveries."""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import signal
import sys
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import passes_pb2 as ppb

if TYPE_CHECKING:  # grpc is imported when a command runs: `passpush --help` starts faster
    import grpc

    from passpush.v1 import notifications_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
BAR_WIDTH = 30
_STATES = {
    npb.TICKET_STATE_PENDING: "PENDING",
    npb.TICKET_STATE_RUNNING: "RUNNING",
    npb.TICKET_STATE_SUCCEEDED: "SUCCEEDED",
    npb.TICKET_STATE_PARTIALLY_FAILED: "PARTIALLY_FAILED",
    npb.TICKET_STATE_FAILED: "FAILED",
    npb.TICKET_STATE_CANCELLED: "CANCELLED",
}


def add_commands(commands: Any) -> None:
    send = commands.add_parser("send", help="send a notification through a running server")
    add_connection(send)
    targets = send.add_mutually_exclusive_group(required=True)
    targets.add_argument(
        "--pass", dest="pass_id", metavar="ID", help="one pass (or its external id)"
    )
    targets.add_argument("--template", metavar="ID", help="every pass of a template")
    targets.add_argument("--tag", help="every pass with this tag (with --in-template: of it)")
    targets.add_argument("--segment", metavar="PROJECT/ID", help="a segment's passes")
    targets.add_argument("--campaign", metavar="ID", help="a campaign's member passes")
    targets.add_argument("--entity", metavar="ID", help="an entity's passes (--group-tag narrows)")
    send.add_argument("--in-template", metavar="ID", default="", help="narrows --tag, --segment")
    send.add_argument("--group-tag", action="append", default=[], help="narrows --entity")
    send.add_argument("--header", default="", help="the notification's label")
    send.add_argument("--body", required=True, help="the notification's text")
    send.add_argument("--request-id", default="", help="makes retrying safe (idempotency key)")
    send.add_argument("--watch", action="store_true", help="show its progress until it is done")

    watch = commands.add_parser("watch", help="show a ticket's progress until it is done")
    add_connection(watch)
    watch.add_argument("ticket", type=int, help="the ticket's id")

    failures = commands.add_parser(
        "failures", help="a ticket's failed deliveries (waits for it to end), e.g. as CSV"
    )
    add_connection(failures)
    failures.add_argument("ticket", type=int, help="the ticket's id")
    failures.add_argument("--csv", action="store_true", help="CSV with a header row")


def add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=os.environ.get("PASSPUSH_GRPC_ADDRESS") or DEFAULT_ADDRESS,
        help="the server (default: PASSPUSH_GRPC_ADDRESS or %(default)s)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("PASSPUSH_API_KEY", ""),
        help="an API key (default: PASSPUSH_API_KEY)",
    )
    tls = parser.add_argument_group("TLS (a server with PASSPUSH_TLS_CERT)")
    tls.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("PASSPUSH_TLS", "").lower() in ("1", "true"),
        help="call over TLS, trusting the system's CAs (implied by the options below; "
        "default: PASSPUSH_TLS)",
    )
    tls.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=os.environ.get("PASSPUSH_TLS_CA"),
        help="call over TLS, trusting the CA certificates in this PEM file instead "
        "(default: PASSPUSH_TLS_CA)",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=os.environ.get("PASSPUSH_TLS_CLIENT_CERT"),
        help="a client certificate (PEM), for a server with PASSPUSH_TLS_CLIENT_CA "
        "(default: PASSPUSH_TLS_CLIENT_CERT)",
    )
    tls.add_argument(
        "--tls-key",
        metavar="FILE",
        default=os.environ.get("PASSPUSH_TLS_CLIENT_KEY"),
        help="the client certificate's key (PEM; default: PASSPUSH_TLS_CLIENT_KEY, or the "
        "--tls-cert file)",
    )


class ConnectionSettingError(Exception):
    """A connection option that cannot be used; its message says which and why."""


def open_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """The channel `add_connection`'s options ask for; ConnectionSettingError when a TLS
    file cannot be read."""
    import grpc

    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return grpc.aio.insecure_channel(args.address)
    if args.tls_key and not args.tls_cert:
        raise ConnectionSettingError("--tls-key needs --tls-cert")
    cert = _read_pem("--tls-cert", args.tls_cert)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem("--tls-ca", args.tls_ca),
        private_key=_read_pem("--tls-key", args.tls_key) or cert,
        certificate_chain=cert,
    )
    return grpc.aio.secure_channel(args.address, credentials)


def _read_pem(option: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConnectionSettingError(f"cannot read {option} {path}: {error.strerror}") from None


async def run(args: argparse.Namespace) -> int:
    """Runs `send`, `watch` or `failures`; the exit status: 0 once the ticket succeeded (or
    was sent without --watch; failures: none failed), 1 when it ended otherwise, 2 when a
    call failed."""
    import grpc

    from passpush.v1 import notifications_pb2_grpc

    cancel_on_ctrl_c()
    if not args.key:
        print("passpush: give an API key with --key or PASSPUSH_API_KEY", file=sys.stderr)
        return 2
    metadata = (("authorization", f"Bearer {args.key}"),)
    ticket_id: int | None = None  # the ticket being followed
    try:
        channel = open_channel(args)
    except ConnectionSettingError as error:
        print(f"passpush: {error}", file=sys.stderr)
        return 2
    async with channel:
        stub: notifications_pb2_grpc.NotificationServiceAsyncStub
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)  # type: ignore[assignment]
        try:
            if args.command == "failures":
                return await export_failures(stub, args.ticket, metadata, sys.stdout, args.csv)
            if args.command == "send":
                ticket = await stub.Send(_send_request(args), metadata=metadata)
                print(f"ticket {ticket.id}: {ticket.counts.total} deliveries")
                if not args.watch:
                    return 0
                ticket_id = ticket.id
            else:
                ticket_id = args.ticket
            final = await watch(stub, ticket_id, metadata, sys.stdout)
        except grpc.aio.AioRpcError as error:
            print(f"passpush: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
        except asyncio.CancelledError:  # Ctrl-C (asyncio.run then raises KeyboardInterrupt)
            if ticket_id is not None:
                stopped_watching(ticket_id)
            raise
    return 0 if final.state == npb.TICKET_STATE_SUCCEEDED else 1


def cancel_on_ctrl_c() -> None:
    """Ctrl-C cancels this command's task, whichever thread the kernel hands the signal to.

    asyncio.run's own handler runs only once the main thread runs Python again; a SIGINT
    taken by one of gRPC's threads left a command waiting on the server asleep for good. The
    loop's handler wakes it through its own pipe. A second Ctrl-C is Python's default."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None

    def interrupted() -> None:
        loop.remove_signal_handler(signal.SIGINT)
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupted)


def stopped_watching(ticket_id: int) -> None:
    """Says, after Ctrl-C, that the server goes on with the ticket without us."""
    if sys.stdout.isatty():
        sys.stdout.write("\n")  # after the progress bar's line
        sys.stdout.flush()
    print(
        f"stopped watching; ticket {ticket_id} goes on "
        f"(passpush watch {ticket_id} to follow it again)",
        file=sys.stderr,
    )


async def watch(
    stub: notifications_pb2_grpc.NotificationServiceAsyncStub,
    ticket_id: int,
    metadata: tuple[tuple[str, str], ...],
    out: TextIO,
) -> npb.Ticket:
    """Follows WatchTicket: redraws the bar on a terminal, prints a line a change otherwise;
    ends with a summary."""
    live = out.isatty()
    ticket = npb.Ticket()
    async for ticket in stub.WatchTicket(npb.WatchTicketRequest(id=ticket_id), metadata=metadata):
        line = progress_line(ticket)
        out.write(f"\r{line}\x1b[K" if live else f"{line}\n")
        out.flush()
    if live:
        out.write("\n")
    out.write(summary(ticket) + "\n")
    out.flush()
    return ticket


FAILURE_COLUMNS = (
    "ticket_id",
    "pass_id",
    "platform",
    "device_library_identifier",
    "google_object_id",
    "reason",
    "attempt",
    "event_time",
)


async def export_failures(
    stub: notifications_pb2_grpc.NotificationServiceAsyncStub,
    ticket_id: int,
    metadata: tuple[tuple[str, str], ...],
    out: TextIO,
    as_csv: bool,
) -> int:
    """Writes the ticket's failed deliveries (StreamDeliveryEvents, FAILED only) as they
    come, until the ticket ends; 0 when there were none, 1 otherwise."""
    request = npb.StreamDeliveryEventsRequest(
        ticket_id=ticket_id, outcomes=[npb.DELIVERY_OUTCOME_FAILED]
    )
    rows = csv.writer(out) if as_csv else None
    if rows is not None:
        rows.writerow(FAILURE_COLUMNS)
    count = 0
    async for event in stub.StreamDeliveryEvents(request, metadata=metadata):
        count += 1
        platform = ppb.Platform.Name(event.platform).removeprefix("PLATFORM_")
        when = event.event_time.ToDatetime(tzinfo=UTC).isoformat()
        if rows is not None:
            rows.writerow(
                (
                    event.ticket_id, event.pass_id, platform, event.device_library_identifier,
                    event.google_object_id, event.reason, event.attempt, when,
                )
            )  # fmt: skip
        else:
            where = event.device_library_identifier or event.google_object_id
            out.write(
                f"pass {event.pass_id} ({platform} {where}): {event.reason}, "
                f"attempt {event.attempt}, {when}\n"
            )
    if rows is None:
        out.write(f"{count} failed deliveries\n")
    out.flush()
    return 1 if count else 0


def progress_line(ticket: npb.Ticket) -> str:
    c = ticket.counts
    done = c.delivered + c.failed + c.skipped
    filled = BAR_WIDTH * done // c.total if c.total else BAR_WIDTH
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    percent = 100 * done // c.total if c.total else 100
    return (
        f"[{bar}] {percent:3d}%  {done}/{c.total}  "
        f"delivered {c.delivered}  failed {c.failed}  skipped {c.skipped}  fetched {c.fetched}"
    )


def summary(ticket: npb.Ticket) -> str:
    c = ticket.counts
    text = (
        f"ticket {ticket.id} {_STATES.get(ticket.state, 'UNKNOWN')}: {c.total} total, "
        f"{c.delivered} delivered, {c.failed} failed, {c.skipped} skipped"
    )
    if c.delivered_without_alert:
        text += f" ({c.delivered_without_alert} of the delivered without an alert: quota reached)"
    text += f", {c.fetched} fetched"
    if ticket.HasField("push_to_fetch_p50"):
        text += (
            f" (push to fetch p50 {_seconds(ticket.push_to_fetch_p50)}, "
            f"p95 {_seconds(ticket.push_to_fetch_p95)})"
        )
    if ticket.errors:
        text += "; errors: " + ", ".join(f"{e.reason} x{e.count}" for e in ticket.errors)
    return text


def _seconds(duration: Any) -> str:
    return f"{duration.ToTimedelta().total_seconds():.3f} s"


def _send_request(args: argparse.Namespace) -> npb.SendRequest:
    target = npb.Target()
    if args.pass_id:
        target.pass_id = args.pass_id
    elif args.template:
        target.template.template_id = args.template
    elif args.tag:
        target.tag.tag = args.tag
        target.tag.template_id = args.in_template
    elif args.segment:
        project_id, _, segment_id = args.segment.partition("/")
        target.segment.project_id = project_id
        target.segment.segment_id = segment_id
        target.segment.template_id = args.in_template
    elif args.campaign:
        target.campaign_id = args.campaign
    else:
        target.entity.entity_id = args.entity
        target.entity.group_tags.extend(args.group_tag)
    return npb.SendRequest(
        target=target,
        content=npb.Content(header=args.header, body=args.body),
        request_id=args.request_id,
    )
