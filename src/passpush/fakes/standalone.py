"""Running a fake on its own (`python -m passpush.fakes.apns`, `... .google`), for trying
passpush against it by hand."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any


def run(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    port: int,
    directory: Path,
    directory_help: str,
    serve: Callable[[str, int, Path], Coroutine[Any, Any, None]],
) -> None:
    """Parses --host, --port and --dir, then serves until interrupted."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=port, help="port to listen on (0: any)")
    parser.add_argument("--dir", type=Path, default=directory, help=directory_help)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.dir))
