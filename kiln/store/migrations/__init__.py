"""Alembic migrations, numbered 0001, 0002, ...; applied automatically when the server starts."""
