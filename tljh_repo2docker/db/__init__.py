"""The database: tables (models), session set-up and migrations (session), queries (store)."""
