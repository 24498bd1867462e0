"""Persistence: SQLAlchemy tables, migrations and the repository the domain talks to."""
