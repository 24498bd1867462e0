"""Persistence: SQLAlchemy Core tables and Alembic migrations on SQLite or PostgreSQL, the write
lock and scheduler lease that let servers share a database, and the repository: one object per
transaction with a part per aggregate (jobs, attempts, shares, environments, queues, definitions,
policies) that holds all SQL and returns typed records. It imports nothing of Kiln's above it and
names no job state of its own."""
