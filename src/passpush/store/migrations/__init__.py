"""Alembic migrations; `passpush migrate` applies them."""
