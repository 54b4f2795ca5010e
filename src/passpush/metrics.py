"""The server's Prometheus metrics (docs/operations.md), and the endpoint that serves them.

Each `passpush serve` process serves the metrics of what it runs on an address of its own
(PASSPUSH_METRICS_ADDRESS), with prometheus_client's small threaded HTTP server: an `api`
process its calls, a `worker` process its deliveries and the outbox's depth, an `all`
process both. The HTTP processes serve devices and the shim only; the shim's calls are
counted as the gRPC calls they make. So no multiprocess mode (files shared by every
process, summed at each scrape) is needed: Prometheus scrapes each `serve` process.

Labels stay few and bounded: methods, status codes, platforms, outcomes; never a ticket,
pass or device.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from passpush.domain.model import DeliveryState

RPCS = Counter(
    "passpush_grpc_server_handled",
    "gRPC calls finished, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "passpush_grpc_server_handling_seconds",
    "How long unary-response gRPC calls took, from the request to the answer.",
    ["grpc_service", "grpc_method"],
)
DELIVERIES = Counter(
    "passpush_deliveries",
    "Deliveries that reached an outcome, by platform and outcome (delivered, "
    "delivered_silent: a Google message shown without an alert, failed).",
    ["platform", "outcome"],
)
RETRIES = Counter(
    "passpush_delivery_retries",
    "Attempts that failed for a passing reason (429, 5xx, no answer): the delivery is "
    "tried again later.",
    ["platform"],
)
GOOGLE_TEXT_FALLBACKS = Counter(
    "passpush_google_text_fallbacks",
    "Google deliveries shown as TEXT, without an alert, by reason: NotificationQuotaReached "
    "(the pass had 3 notifying messages in 24 h), GoogleNotificationQuotaExceeded (Google "
    "refused to notify).",
    ["reason"],
)
OUTBOX = Gauge(
    "passpush_outbox_deliveries",
    "Pending deliveries in the database, by platform and state (due: to push now; leased: "
    "in a worker's hands; retrying: waiting for their next attempt); read every "
    "OUTBOX_EVERY_SECONDS.",
    ["platform", "state"],
)
APNS_SECONDS = Histogram(
    "passpush_apns_request_duration_seconds",
    "How long APNs took to answer a push (or to fail to).",
)
GOOGLE_SECONDS = Histogram(
    "passpush_google_request_duration_seconds",
    "How long the Google Wallet API took to answer a request (or to fail to), by HTTP method.",
    ["method"],
)
SUBSCRIBERS = Gauge(
    "passpush_event_stream_subscribers",
    "Open status streams, by kind (watch_ticket: WatchTicket, delivery_events: "
    "StreamDeliveryEvents).",
    ["stream"],
)
READY = Gauge(
    "passpush_ready",
    "1 while this process can do its work (the database can be written), else 0: what its "
    "gRPC health and /readyz say, and a worker process's only sign of it.",
)
SCHEDULER_LAG = Histogram(
    "passpush_scheduler_lag_seconds",
    "How late scheduled notifications were sent, after their send time.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)

OUTBOX_EVERY_SECONDS = 15.0
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"

_SILENT = DeliveryState.DELIVERED_WITHOUT_ALERT


def count_outcomes(counted: Iterable[tuple[tuple[str, DeliveryState, str], int]]) -> None:
    """Counts recorded outcomes: ((platform, state, reason), how many) pairs."""
    for (platform, state, reason), count in counted:
        if state is DeliveryState.PENDING:
            RETRIES.labels(platform).inc(count)
            continue
        if state not in (DeliveryState.DELIVERED, _SILENT, DeliveryState.FAILED):
            continue
        DELIVERIES.labels(platform, state.value).inc(count)
        if state is _SILENT:
            GOOGLE_TEXT_FALLBACKS.labels(reason).inc(count)


def serve_metrics(address: str) -> MetricsEndpoint:
    """Serves the metrics on `address` (host:port; port 0: any free one) in a thread of
    their own. OSError when the address cannot be listened on."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise OSError(f"{address!r} is not host:port")
    server, thread = start_http_server(int(port), host.strip("[]"))
    return MetricsEndpoint(server, thread)


@dataclass(frozen=True)
class MetricsEndpoint:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
