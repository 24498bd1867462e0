"""Persistence: SQLAlchemy Core tables and Alembic migrations on SQLite or PostgreSQL, the write
lock and scheduler lease that let servers share a database, and the repository that holds all
SQL. It imports nothing of Kiln's above it and names no job state of its own."""
