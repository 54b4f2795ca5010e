"""Which revision of the schema a database is at, and which this version of passpush has,
without alembic.

Every command checks the database before it starts (database_checks.py), and alembic's
import took about a tenth of each `passpush serve` or `keys` process's start-up CPU (the
server's imports 0.81-0.91 s with it, 0.73-0.80 s without): it is loaded only to migrate
(migrate.py). The revisions are read from the migration files' `revision` and
`down_revision` lines; a test holds them equal to what alembic makes of the same files.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

VERSIONS = Path(__file__).parent / "migrations" / "versions"
_REVISION = re.compile(r'^revision(?:: str)? = "(\w+)"$', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision(?:: str \| None)? = (?:None|"(\w+)")$', re.MULTILINE)


async def current(engine: AsyncEngine) -> str | None:
    """The database's revision; None before the first migration."""
    async with engine.connect() as connection:
        if not await connection.run_sync(lambda sync: inspect(sync).has_table("alembic_version")):
            return None
        found = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    return str(found[0][0]) if found else None


def head() -> str:
    return revisions()[-1]


@functools.cache
def revisions() -> tuple[str, ...]:
    """Every revision, oldest first (one line of migrations, each after the one before);
    a tuple, as the cache hands the same one to every caller."""
    after: dict[str | None, str] = {}
    for path in VERSIONS.glob("*.py"):
        source = path.read_text()
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            continue  # not a migration (__init__.py)
        after[down.group(1)] = revision.group(1)
    ordered: list[str] = []
    while (following := after.get(ordered[-1] if ordered else None)) is not None:
        ordered.append(following)
    return tuple(ordered)
