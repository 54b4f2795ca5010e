"""passpush's APNs gateway alone, in the raw loop's shape: no database, no worker.

    python -m benchmarks.gateway_loop --port P --ca ca.pem --count N [--connections 4]
                                      [--in-flight 200] [--key-file k.p8 | --client-cert c.pem]

Prints one JSON line like raw_aioapns.py. Between the raw loop and the whole server it tells
where passpush's time goes: in its gateway (aioapns with passpush's protocol), or in the
worker and the database around it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from benchmarks.harness import TOPIC
from benchmarks.raw_aioapns import device_token, in_lanes
from passpush.delivery.apple.gateway import ApnsConfig, ApnsGateway


async def push_all(gateway: ApnsGateway, count: int, in_flight: int) -> tuple[int, float]:
    async def push(index: int) -> bool:
        return (await gateway.push(device_token(index), TOPIC)).delivered

    return await in_lanes(push, count, in_flight)


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    gateway = ApnsGateway(
        ApnsConfig(
            endpoint=f"127.0.0.1:{args.port}",
            ca_file=args.ca,
            cert_file=args.client_cert,
            key_file=args.key_file,
            key_id="BENCHKEY01" if args.key_file else None,
            team_id="BENCHTEAM1" if args.key_file else None,
            max_connections=args.connections,
        )
    )
    try:
        await push_all(gateway, min(args.in_flight, args.count), args.in_flight)  # connect
        ok, seconds = await push_all(gateway, args.count, args.in_flight)
    finally:
        await gateway.close()
    return {"count": args.count, "ok": ok, "seconds": seconds, "rate": args.count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--key-file", help="token auth with this .p8 key")
    parser.add_argument("--client-cert", help="certificate auth with this PEM (cert + key)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
