"""Applies the alembic migrations to a database, programmatically (the one module outside
the migrations themselves that imports alembic: schema_revision.py reads revisions
without it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from passpush.store import schema_revision
from passpush.store.db import make_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrates the database to `revision`; safe to run again (it does nothing)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


class UnknownRevision(ValueError):
    """A revision this version of passpush has no migration for."""


def migrate_to(database_url: str, target: str = "head") -> str:
    """Upgrades or downgrades the database to `target` (a revision, `head` or `base`);
    returns the revision it is at now (`base`: none)."""
    known = schema_revision.revisions()
    wanted = {"head": known[-1], "base": None}.get(target, target)
    if wanted is not None and wanted not in known:
        raise UnknownRevision(
            f"no revision {target!r}; there are {known[0]} to {known[-1]} (and head, base)"
        )
    current = asyncio.run(_current_revision_of(database_url))
    if current is not None and current not in known:
        raise UnknownRevision(
            f"the database is at revision {current!r}, which this version of passpush does not "
            "have: a newer version migrated it"
        )
    position = {revision: index for index, revision in enumerate(known)}
    here = -1 if current is None else position[current]
    there = -1 if wanted is None else position[wanted]
    if there > here:
        upgrade(database_url, wanted or "head")
    elif there < here:
        downgrade(database_url, wanted or "base")
    return wanted or "base"


async def _current_revision_of(database_url: str) -> str | None:
    engine = make_engine(database_url)
    try:
        return await schema_revision.current(engine)
    finally:
        await engine.dispose()
