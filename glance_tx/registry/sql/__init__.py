"""
L{IRegistry} on a SQL database (SQLAlchemy Core): SQLite by default,
PostgreSQL to scale out.

  - L{glance_tx.registry.sql.engine}: engines, transactions, migrations;
  - L{glance_tx.registry.sql.query}: listing SQL (keyset paging, filters,
    who may see what);
  - L{glance_tx.registry.sql.rows}: rows to records and back;
  - L{glance_tx.registry.sql.provider}: L{SQLRegistry} and
    L{open_sql_registry}, re-exported here.
"""

from glance_tx.registry.sql.provider import SQLRegistry, open_sql_registry

__all__ = ["SQLRegistry", "open_sql_registry"]
