"""The reference loop: plain aioapns 4.0 pushing `{}` to the fake APNs as fast as it can.

Run as a subprocess of the fan-out benchmark, so that it gets a process of its own, like the
passpush server it is compared with:

    python -m benchmarks.raw_aioapns --port P --ca ca.pem --count N [--connections 4]
                                     [--in-flight 200] [--client-cert cert.pem]

It prints one JSON line: {"count", "ok", "seconds", "rate"}. Nothing of passpush is used:
aioapns' own `APNs` client with token auth (a throwaway P-256 key; the fake ignores auth) or,
with --client-cert, certificate auth; its own connection pool; and a protocol subclass that
only says where the server is. `in_flight` coroutines each send one push after another, so
that at most that many are in flight. A first round of `in_flight` pushes, untimed, opens the
connection(s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from aioapns import APNs, NotificationRequest
from aioapns.connection import APNsProductionClientProtocol
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks.harness import TOPIC


def throwaway_p8_key() -> str:
    """A fresh P-256 key in PKCS#8 PEM, the shape of an APNs .p8 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode()


def device_token(index: int) -> str:
    """A distinct 64-hex-digit token per push (what a device token looks like)."""
    return f"{index:064x}"


def make_client(port: int, ca_file: str, connections: int, client_cert: str | None) -> APNs:
    class LocalProtocol(APNsProductionClientProtocol):
        APNS_SERVER = "127.0.0.1"
        APNS_PORT = port

    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    if client_cert is not None:
        client = APNs(
            client_cert=client_cert,
            topic=TOPIC,
            max_connections=connections,
            ssl_context=context,
        )
    else:
        client = APNs(
            key=throwaway_p8_key(),
            key_id="BENCHKEY01",
            team_id="BENCHTEAM1",
            topic=TOPIC,
            max_connections=connections,
            ssl_context=context,
        )
    client.pool.protocol_class = LocalProtocol
    return client


async def in_lanes(
    push: Callable[[int], Awaitable[bool]], count: int, in_flight: int
) -> tuple[int, float]:
    """Pushes 0..count-1 through `in_flight` lanes; returns (successes, seconds). The raw loop
    and the gateway loop both run on it, so that only what they push through differs."""
    next_index = 0
    ok = 0

    async def lane() -> None:
        nonlocal next_index, ok
        while next_index < count:
            index = next_index
            next_index += 1
            delivered = await push(index)  # awaited before `ok` is read: lanes interleave
            ok += delivered

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return ok, time.perf_counter() - started


async def push_all(client: APNs, count: int, in_flight: int) -> tuple[int, float]:
    """Sends `count` pushes with at most `in_flight` at once; returns (200s, seconds)."""

    async def push(index: int) -> bool:
        request = NotificationRequest(device_token(index), {}, apns_topic=TOPIC)
        return bool((await client.send_notification(request)).is_successful)

    return await in_lanes(push, count, in_flight)


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    client = make_client(args.port, args.ca, args.connections, args.client_cert)
    # Open the connections outside the timed part, as passpush's are by its first batch.
    await push_all(client, min(args.in_flight, args.count), args.in_flight)
    ok, seconds = await push_all(client, args.count, args.in_flight)
    client.pool.close()
    return {"count": args.count, "ok": ok, "seconds": seconds, "rate": args.count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True, help="CA file the fake's certificate chains to")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--client-cert", help="certificate auth with this PEM (cert + key)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
