"""
Alembic environment for the registry.

Migrations are run from code (L{glance_tx.registry.sql.engine.upgrade}), never from
the alembic command line: the caller opens the connection, on a thread that
may block, and passes it in C{config.attributes["connection"]}.
"""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "The glance-tx registry migrations run from code: pass a SQLAlchemy "
        "connection in config.attributes['connection']"
    )

# The registry's tables are described by the revisions themselves; no
# target_metadata, because autogenerate is not used at run time.
context.configure(connection=connection, target_metadata=None)

with context.begin_transaction():
    context.run_migrations()
