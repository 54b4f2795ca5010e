"""API keys and scopes: what a caller may do, and in which project."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from passpush.domain.errors import InvalidArgument

KEY_PREFIX = "ppk_"


class Scope(enum.StrEnum):
    NOTIFICATIONS_WRITE = "notifications:write"
    NOTIFICATIONS_READ = "notifications:read"
    PASSES_WRITE = "passes:write"
    PASSES_READ = "passes:read"
    CAMPAIGNS_WRITE = "campaigns:write"
    CAMPAIGNS_READ = "campaigns:read"
    ADMIN = "admin"  # key management


# Other names callers know scopes by: Airship's `wnot`, and `all` for a demo or root key.
SCOPE_ALIASES: dict[str, frozenset[Scope]] = {
    "wnot": frozenset({Scope.NOTIFICATIONS_WRITE, Scope.NOTIFICATIONS_READ}),
    "all": frozenset(Scope),
}


def parse_scopes(names: Iterable[str], field: str = "scopes") -> frozenset[Scope]:
    found: set[Scope] = set()
    for name in names:
        name = name.strip()
        if name in SCOPE_ALIASES:
            found |= SCOPE_ALIASES[name]
        elif name in Scope.__members__.values():
            found.add(Scope(name))
        else:
            known = ", ".join([*Scope, *SCOPE_ALIASES])
            raise InvalidArgument.field(field, f"unknown scope {name!r} (known: {known})")
    if not found:
        raise InvalidArgument.field(field, "name at least one scope")
    return frozenset(found)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's project is the only one it can see."""

    project_id: str
    key_id: str
    scopes: frozenset[Scope]


@dataclass(frozen=True)
class ApiKey:
    id: str
    project_id: str
    name: str
    scopes: frozenset[Scope]
    create_time: datetime
    revoke_time: datetime | None = None


@dataclass(frozen=True)
class KeyMaterial:
    """A new key: `plaintext` is shown once; only `salt` and `secret_hash` are stored."""

    key_id: str
    plaintext: str
    salt: str
    secret_hash: str


def new_key_material() -> KeyMaterial:
    key_id = KEY_PREFIX + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    return KeyMaterial(key_id, f"{key_id}.{secret}", salt, hash_secret(salt, secret))


def split_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a presented key, or None when it is not shaped like one."""
    key_id, dot, secret = key.strip().partition(".")
    if not dot or not key_id.startswith(KEY_PREFIX) or not secret or len(key_id) > 32:
        return None
    return key_id, secret


def hash_secret(salt: str, secret: str) -> str:
    # The secret is 256 random bits, so a salted SHA-256 cannot be brute-forced; a slow
    # password hash would only cost every call milliseconds.
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def secret_matches(salt: str, secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(salt, secret), secret_hash)
