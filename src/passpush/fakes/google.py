"""A fake Google Wallet API: a real HTTP server on loopback that answers like Google.

It serves the OAuth 2.0 token endpoint a service account uses (the JWT bearer grant: the
assertion's signature is checked against the account's public key, and an access token with
an expiry comes back) and the methods passpush calls on objects and on classes alike:
`addMessage`, `get` and `patch`. Every API call must carry a live `Authorization: Bearer`
token of its own making. It records every request, enforces Google's rule of 3 notifying
(`TEXT_AND_NOTIFY`) messages per object (and per class) per 24 hours with Google's refusal
(403 `quotaExceeded`), and answers errors on demand; it also fails as Google's service does
now and then: an outage (every API call answered 503) and a share of 429/503 answers
(`outage`, `faults`).

Run it standalone with `python -m passpush.fakes.google --port 8095 --dir var/fake-google`:
it writes the service-account key to use as PASSPUSH_GOOGLE_CREDENTIALS there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs

import google.auth.exceptions
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from passpush.domain.validation import GOOGLE_CLASS_TYPES, GOOGLE_OBJECT_TYPES
from passpush.fakes import standalone

logger = logging.getLogger(__name__)

ANY_OBJECT = "*"
"""Pass to `FakeGoogleWallet.respond` to program the answer for every object without its own."""

SCOPE = "https://www.googleapis.com/auth/wallet_object.issuer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
NOTIFYING_PER_DAY = 3
DAY_SECONDS = 24 * 3600
_REASON_STATUS = {  # Google's `status` for the HTTP statuses a test may program
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
# The transient errors Google answers, as it words them; `faults` picks among them.
TRANSIENT_ERRORS = ((503, "backendError"), (429, "rateLimitExceeded"))


@dataclass(frozen=True)
class ServiceAccount:
    """A service account's JSON key file, and the public key that checks its signatures."""

    key_file: Path
    client_email: str
    public_key_pem: str


def make_service_account(
    directory: Path, token_url: str = "", client_email: str = "passpush@fake-issuer.example"
) -> ServiceAccount:
    """Writes a service-account key (a fresh RSA key) to directory/service-account.json;
    reuses one that is there already."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "service-account.json"
    if key_file.exists():
        info = json.loads(key_file.read_text())
        private_key = serialization.load_pem_private_key(info["private_key"].encode(), None)
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": "fake-issuer",
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": client_email,
            "client_id": "100000000000000000000",
            "token_uri": token_url or "https://oauth2.googleapis.com/token",
        }
        key_file.touch(mode=0o600)
        key_file.write_text(json.dumps(info, indent=2))
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return ServiceAccount(key_file, str(info["client_email"]), public_pem)


@dataclass(frozen=True)
class ReceivedRequest:
    """One API request the fake received, recorded whatever it answered."""

    method: str
    path: str
    object_type: str
    object_id: str
    action: str  # "addMessage", "get" or "patch"
    body: dict[str, Any]
    status: int  # what the fake answered
    received_at: float  # time.time()


@dataclass
class _ProgrammedAnswer:
    status: int
    reason: str
    remaining: int | None  # answers left before the real ones again; None: for ever
    action: str | None  # only this action ("addMessage", "get", "patch"); None: any


@dataclass
class _WalletObject:
    object_type: str
    fields: dict[str, Any]
    notified_at: list[float] = field(default_factory=list)  # fake clock times


class FakeGoogleWallet:
    """A fake Google Wallet API and token endpoint. Start it, point passpush at `api_base`
    and `token_url` with the key of `account`."""

    def __init__(
        self,
        account: ServiceAccount,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        create_objects: bool = False,
        token_lifetime: int = 3600,
    ) -> None:
        self.account = account
        self.host = host
        # True: an object is made on first use (the bundled fake of `make run`); False: an
        # unknown object is 404, as on Google, where the issuer inserts objects first.
        self.create_objects = create_objects
        self.token_lifetime = token_lifetime  # seconds
        self.clock: Callable[[], float] = time.time  # the 24-hour rule's clock
        self.requests: list[ReceivedRequest] = []
        self.token_grants = 0
        self._requested_port = port
        self._objects: dict[str, _WalletObject] = {}
        self._classes: dict[str, _WalletObject] = {}
        self._tokens: dict[str, float] = {}  # access token -> expiry (time.time())
        self._programmed: dict[str, list[_ProgrammedAnswer]] = {}
        self._late_answers: list[float] = []
        self._down_until = 0.0  # time.monotonic(): API calls are answered 503 until then
        self._error_share = 0.0
        self._random = random.Random()
        self._arrived = asyncio.Event()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        config = uvicorn.Config(self._app(), log_config=None, access_log=False, lifespan="off")
        self._server = _QuietSignalsServer(config)
        listener = socket.create_server((self.host, self._requested_port))
        self._task = asyncio.create_task(self._server.serve(sockets=[listener]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the fake Google Wallet API stopped before it started")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        self._server = self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake Google Wallet API is not started")
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.api_base}/token"

    # -- objects, answers and tokens ---------------------------------------------------------

    def add_object(
        self,
        object_type: str,
        object_id: str,
        messages: list[dict[str, Any]] | None = None,
        *,
        notified_today: int = 0,
    ) -> None:
        """An object the issuer inserted, with the messages it holds already, and how many
        notifying messages it took in the last 24 hours (from elsewhere than passpush)."""
        self._objects[object_id] = _WalletObject(
            object_type,
            {"id": object_id, "messages": list(messages or [])},
            [self.clock()] * notified_today,
        )

    def messages(self, object_id: str) -> list[dict[str, Any]]:
        """The object's messages now, oldest first."""
        return list(self._objects[object_id].fields.get("messages") or [])

    def add_class(
        self, class_type: str, class_id: str, messages: list[dict[str, Any]] | None = None
    ) -> None:
        """A class the issuer inserted, with the messages it holds already."""
        self._classes[class_id] = _WalletObject(
            class_type, {"id": class_id, "messages": list(messages or [])}
        )

    def class_messages(self, class_id: str) -> list[dict[str, Any]]:
        """The class's messages now, oldest first: each is shown on every object of it."""
        return list(self._classes[class_id].fields.get("messages") or [])

    def respond(
        self,
        status: int,
        reason: str,
        *,
        times: int | None = None,
        object_id: str = ANY_OBJECT,
        action: str | None = None,
    ) -> None:
        """Answer requests about object_id (ANY_OBJECT: any without a rule of its own) with
        status and Google's error reason: always, or the next `times` ones; of one action
        only, if given. Rules queue up: the first whose count is left answers."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for always)")
        self._programmed.setdefault(object_id, []).append(
            _ProgrammedAnswer(status, reason, times, action)
        )

    def answer_late(self, seconds: float, *, times: int = 1) -> None:
        """Carry out the next `times` API requests, but answer each only after `seconds`: a
        client that gives up first has its message added without knowing it."""
        self._late_answers += [seconds] * times

    def outage(self, seconds: float) -> None:
        """Answer every API call 503 `backendError` for the next `seconds` (math.inf: until
        `end_outage`); the token endpoint stays up."""
        self._down_until = time.monotonic() + seconds

    def end_outage(self) -> None:
        self._down_until = 0.0

    def faults(self, *, errors: float = 0.0, seed: int | None = None) -> None:
        """From now on answer a share `errors` of API calls with a transient error (503
        `backendError` or 429 `rateLimitExceeded`). Programmed answers come first."""
        if not 0.0 <= errors <= 1.0:
            raise ValueError("the share of errors is between 0 and 1")
        self._error_share = errors
        self._random = random.Random(seed)

    def expire_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        self._tokens.clear()

    def reset(self) -> None:
        self.requests.clear()
        self._programmed.clear()
        self._late_answers.clear()
        self.token_grants = 0
        self._down_until = self._error_share = 0.0

    def received(self, action: str | None = None) -> list[ReceivedRequest]:
        return [r for r in self.requests if action is None or r.action == action]

    async def wait_for(self, count: int, action: str = "addMessage", timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until at least count requests of `action` arrived; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while len(self.received(action)) < count:
                self._arrived.clear()
                await self._arrived.wait()

    # -- the HTTP side -----------------------------------------------------------------------

    def _app(self) -> Starlette:
        base = "/walletobjects/v1/{object_type}/{object_id}"
        return Starlette(
            routes=[
                Route("/token", self._token, methods=["POST"]),
                Route(base + "/addMessage", self._add_message, methods=["POST"]),
                Route(base, self._object, methods=["GET", "PATCH"]),
            ]
        )

    async def _token(self, request: Request) -> Response:
        """The JWT bearer grant (RFC 7523) as Google's token endpoint answers it."""
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _grant_error("unsupported_grant_type", "Invalid grant_type.")
        try:
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                form.get("assertion", ""),
                certs=self.account.public_key_pem,
                # google-auth names Google's endpoint as the audience wherever it posts.
                audience=[GOOGLE_TOKEN_AUDIENCE, self.token_url],
            )
        except (ValueError, google.auth.exceptions.GoogleAuthError) as error:
            return _grant_error("invalid_grant", f"Invalid JWT: {error}")
        if claims.get("iss") != self.account.client_email:
            return _grant_error("invalid_grant", "Invalid JWT: unknown service account.")
        if SCOPE not in str(claims.get("scope", "")).split():
            return _grant_error("invalid_scope", "The wallet_object.issuer scope is required.")
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._tokens[token] = time.time() + self.token_lifetime
        self.token_grants += 1
        return JSONResponse(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    async def _add_message(self, request: Request) -> Response:
        return await self._serve(request, "addMessage")

    async def _object(self, request: Request) -> Response:
        return await self._serve(request, "get" if request.method == "GET" else "patch")

    async def _serve(self, request: Request, action: str) -> Response:
        object_type = request.path_params["object_type"]
        object_id = request.path_params["object_id"]
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        response = self._answer(request, action, object_type, object_id, body)
        self.requests.append(
            ReceivedRequest(
                request.method,
                request.url.path,
                object_type,
                object_id,
                action,
                body if isinstance(body, dict) else {},
                response.status_code,
                time.time(),
            )
        )
        self._arrived.set()
        logger.info("%s %s %s: %d", action, object_type, object_id, response.status_code)
        if self._late_answers:
            await asyncio.sleep(self._late_answers.pop(0))
        return response

    def _answer(
        self, request: Request, action: str, object_type: str, object_id: str, body: Any
    ) -> Response:
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ")
        if not authorization.startswith("Bearer ") or self._tokens.get(token, 0) < time.time():
            return _error(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        if time.monotonic() < self._down_until:
            return _error(503, "backendError", "The service is currently unavailable.")
        programmed = self._programmed_answer(object_id, action)
        if programmed is not None:
            return _error(programmed.status, programmed.reason, f"Programmed {programmed.reason}")
        if self._error_share > 0 and self._random.random() < self._error_share:
            status, reason = self._random.choice(TRANSIENT_ERRORS)
            return _error(status, reason, "A transient error: please retry.")
        if object_type not in GOOGLE_CLASS_TYPES | GOOGLE_OBJECT_TYPES:
            return _error(404, "notFound", f"Unknown resource type {object_type}.")
        is_class = object_type in GOOGLE_CLASS_TYPES
        resources = self._classes if is_class else self._objects
        wallet_object = resources.get(object_id)
        if wallet_object is None and self.create_objects:
            resources[object_id] = _WalletObject(object_type, {"id": object_id, "messages": []})
            wallet_object = resources[object_id]
        if wallet_object is None or wallet_object.object_type != object_type:
            return _error(404, "resourceNotFound", f"Resource not found: {object_id}")
        if not isinstance(body, dict):
            return _error(400, "invalidArgument", "Invalid JSON payload received.")
        if action == "get":
            return JSONResponse(wallet_object.fields)
        if action == "patch":
            if "messages" in body:
                wallet_object.fields["messages"] = list(body["messages"] or [])
            return JSONResponse(wallet_object.fields)
        return self._add(wallet_object, object_id, body.get("message"))

    def _add(self, wallet_object: _WalletObject, object_id: str, message: Any) -> Response:
        if not isinstance(message, dict) or not message.get("body"):
            return _error(400, "invalidArgument", "message.body is required.")
        if message.get("messageType", "TEXT") not in ("TEXT", "TEXT_AND_NOTIFY"):
            return _error(400, "invalidArgument", "Invalid messageType.")
        if message.get("messageType") == "TEXT_AND_NOTIFY":
            now = self.clock()
            recent = [t for t in wallet_object.notified_at if t > now - DAY_SECONDS]
            if len(recent) >= NOTIFYING_PER_DAY:
                # Google's refusal, word for word in shape (edutap-eu/edutap.wallet_google#3).
                return _error(
                    403,
                    "quotaExceeded",
                    f"Quota exceeded for issuer when adding TEXT_AND_NOTIFY message to object "
                    f"{object_id}.",
                    domain="walletobjects",
                )
            wallet_object.notified_at = [*recent, now]
        wallet_object.fields.setdefault("messages", []).append(message)
        return JSONResponse({"resource": wallet_object.fields})

    def _programmed_answer(self, object_id: str, action: str) -> _ProgrammedAnswer | None:
        for key in (object_id, ANY_OBJECT):
            rules = self._programmed.get(key, [])
            for rule in rules:
                if rule.action not in (None, action):
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        rules.remove(rule)
                return rule
        return None


def _error(status: int, reason: str, message: str, domain: str = "global") -> JSONResponse:
    """Google's JSON error shape."""
    error = {
        "code": status,
        "message": message,
        "errors": [{"message": message, "domain": domain, "reason": reason}],
        "status": _REASON_STATUS.get(status, "UNKNOWN"),
    }
    headers = {"retry-after": "1"} if status == 429 else None
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _grant_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


class _QuietSignalsServer(uvicorn.Server):
    # The process that runs the fake owns its signals; uvicorn must not take them.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start_bundled_fake(directory: Path) -> FakeGoogleWallet:
    """Start a fake Google Wallet API on a free loopback port, with a service-account key in
    directory, that makes objects on first use. `serve` uses it without Google credentials."""
    fake = FakeGoogleWallet(make_service_account(directory), create_objects=True)
    await fake.start()
    return fake


async def _serve(host: str, port: int, directory: Path) -> None:
    account = make_service_account(directory)
    async with FakeGoogleWallet(account, host, port, create_objects=True) as fake:
        print(
            f"fake Google Wallet API on {fake.api_base} (token URL {fake.token_url}); "
            f"service-account key at {account.key_file}",
            flush=True,
        )
        await asyncio.Event().wait()  # until interrupted


def main(argv: list[str] | None = None) -> None:
    standalone.run(
        argv,
        prog="python -m passpush.fakes.google",
        description="Run a fake Google Wallet API that takes every message and logs it.",
        port=8095,
        directory=Path("var/fake-google"),
        directory_help="directory for the service-account key",
        serve=_serve,
    )


if __name__ == "__main__":
    main()
