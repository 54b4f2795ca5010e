"""The database a command is about to use, checked first: one that is not there, cannot be
reached or is not migrated is said in one line with what to do, instead of a traceback (or,
for SQLite, an empty file made where the operator happened to stand)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.store import schema_revision
from passpush.store.db import make_engine

# What connecting to or reading a database raises when it is not there, refuses us, or
# goes away: socket errors and timeouts from the driver, and SQLAlchemy's wrappers.
DATABASE_ERRORS = (OSError, TimeoutError, SQLAlchemyError)


class DatabaseUnusable(Exception):
    """Why a command cannot use its database, in one line for the operator."""


async def open_migrated(url: str) -> AsyncEngine:
    """An engine on the database at `url`, which exists and is at this version's schema."""
    _refuse_a_missing_sqlite_file(url)
    engine = make_engine(url)
    try:
        current = await schema_revision.current(engine)
    except DATABASE_ERRORS as error:
        await engine.dispose()
        raise DatabaseUnusable(trouble(error, url)) from None
    head = schema_revision.head()
    if current == head:
        return engine
    await engine.dispose()
    if current is not None and current not in schema_revision.revisions():
        raise DatabaseUnusable(
            f"the database {shown(url)} is at revision {current}, newer than this version of "
            f"passpush ({head}): run the version that migrated it"
        )
    at = f"revision {current}, not {head}" if current else "it has none"
    raise DatabaseUnusable(
        f"the schema of the database {shown(url)} is not up to date ({at}): "
        "run `passpush migrate` first"
    )


def _refuse_a_missing_sqlite_file(url: str) -> None:
    """Connecting would create the file (and its directory): an empty database, wherever the
    command ran, instead of the operator's."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return
    path = Path(database).resolve()
    if not path.exists():
        raise DatabaseUnusable(
            f"no database at {path}: run `passpush migrate` to create it (or set "
            "PASSPUSH_DATABASE_URL to the one you migrated)"
        )


def trouble(error: BaseException, url: str) -> str:
    """What went wrong with the database, in a line without a Python exception's text."""
    reason: BaseException = error
    if isinstance(error, DBAPIError) and error.orig is not None:
        reason = error.orig  # the driver's own words, without SQLAlchemy's statement and link
    text = (reason.strerror if isinstance(reason, OSError) else None) or str(reason)
    if isinstance(reason, TimeoutError) and not text:
        text = "no answer in time"
    return f"cannot use the database {shown(url)} (PASSPUSH_DATABASE_URL): {text}"


def shown(url: str) -> str:
    """The URL without its password."""
    return make_url(url).render_as_string(hide_password=True)
