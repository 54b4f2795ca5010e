"""Wake-ups between the processes on one SQLite file: a datagram to each one's Unix socket.

Each process that listens binds a datagram socket in a directory beside the database
(`passpush.db-wakeups/`), named after the topics it listens to; a process that tells lists
that directory (again only when it changed) and sends one datagram to each socket whose name
has the topic. A send is one system call that never waits (a receiver with a full queue has
wake-ups waiting already). Measured on this 2-core machine under load (2026-12-03): 9 us a
listener for the sendto, 19 us a tell back to back; the handler in the other process ran
0.1 ms later at p50, 2.2 ms at p99, where a worker's own poll is 500 ms away. A socket left
by a process that died refuses datagrams: it is removed.

A Unix socket's path has at most 107 bytes; a database whose directory is too deep for that
gets its sockets in the system's temporary directory instead, under a name made of the
database's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import tempfile
import time
from collections import defaultdict

from passpush.store.wakeups import Handler, Topic

log = logging.getLogger(__name__)

_LETTERS = {
    Topic.DELIVERIES: "d",
    Topic.FAN_OUT: "f",
    Topic.SCHEDULES: "s",
    Topic.CHANGES: "c",
}
_TOPICS = {letter: topic for topic, letter in _LETTERS.items()}
_MAX_PATH = 100  # bytes of a socket's path: sun_path holds 108, with its NUL
_LOOK_SECONDS = 0.25  # how often a sender asks whether the directory changed
_RELIST_SECONDS = 5.0  # the directory is listed again at least this often


def wake_directory(database: str) -> str:
    """Where the processes on `database` put their sockets."""
    beside = os.path.abspath(database) + "-wakeups"
    if len(beside) + 40 <= _MAX_PATH:  # room for the longest socket name
        return beside
    digest = hashlib.sha256(os.path.realpath(database).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"passpush-wakeups-{digest}")


class SocketWakeUps:
    """The wake-ups of one process on a SQLite file."""

    def __init__(self, database: str) -> None:
        self._directory = wake_directory(database)
        self._handlers: dict[Topic, list[Handler]] = defaultdict(list)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._receiver: socket.socket | None = None
        self._own_path: str | None = None
        self._peers: list[tuple[str, str]] = []  # (path, letters) of the others
        self._listed_version = -1
        self._listed_at = 0.0
        self._looked_at = -_LOOK_SECONDS

    def subscribe(self, topic: Topic, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    async def start(self) -> None:
        if not self._handlers:
            return
        os.makedirs(self._directory, mode=0o700, exist_ok=True)
        letters = "".join(sorted(_LETTERS[t] for t in self._handlers))
        self._own_path = os.path.join(
            self._directory, f"{letters}-{os.getpid()}-{secrets.token_hex(4)}.sock"
        )
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.setblocking(False)
        receiver.bind(self._own_path)
        self._receiver = receiver
        asyncio.get_running_loop().add_reader(receiver.fileno(), self._read)

    async def stop(self) -> None:
        if self._receiver is not None:
            asyncio.get_running_loop().remove_reader(self._receiver.fileno())
            self._receiver.close()
            self._receiver = None
        if self._own_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._own_path)
            self._own_path = None
        self._sender.close()

    def tell(self, topic: Topic, payload: str = "") -> None:
        letter = _LETTERS[topic]
        message = f"{letter}{payload}".encode()
        for path, letters in self._listeners():
            if letter not in letters:
                continue
            try:
                self._sender.sendto(message, path)
            except BlockingIOError:
                pass  # its queue is full: it has wake-ups waiting already
            except (ConnectionRefusedError, FileNotFoundError):
                # Its process is gone (a socket nobody reads refuses): forget it.
                with contextlib.suppress(OSError):
                    os.unlink(path)
                self._listed_version = -1
                self._looked_at = -_LOOK_SECONDS
            except OSError as error:
                log.debug("waking %s failed: %s", path, error)

    def _listeners(self) -> list[tuple[str, str]]:
        """The other processes' sockets, listed again when the directory changed; whether
        it changed is asked at most every _LOOK_SECONDS (a stat costs ~6 us here, more than
        the send): a process that starts meanwhile looks at the database itself."""
        now = time.monotonic()
        if now - self._looked_at < _LOOK_SECONDS:
            return self._peers
        self._looked_at = now
        try:
            version = os.stat(self._directory).st_mtime_ns
        except FileNotFoundError:
            self._peers = []
            return self._peers
        if version != self._listed_version or now - self._listed_at > _RELIST_SECONDS:
            try:
                names = os.listdir(self._directory)
            except FileNotFoundError:
                names = []
            self._peers = [
                (os.path.join(self._directory, name), name.partition("-")[0])
                for name in names
                if name.endswith(".sock") and os.path.join(self._directory, name) != self._own_path
            ]
            self._listed_version, self._listed_at = version, now
        return self._peers

    def _read(self) -> None:
        """Reads every datagram waiting; each topic's handlers run once per distinct payload."""
        assert self._receiver is not None
        received: dict[Topic, set[str]] = defaultdict(set)
        while True:
            try:
                data = self._receiver.recv(256)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return
            text = data.decode(errors="replace")
            topic = _TOPICS.get(text[:1])
            if topic is not None:
                received[topic].add(text[1:])
        for topic, payloads in received.items():
            for payload in payloads:
                for handler in self._handlers.get(topic, ()):
                    try:
                        handler(payload)
                    except Exception:
                        log.exception("a %s wake-up's handler failed", topic.name)
