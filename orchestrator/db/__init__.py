"""State: SQLModel tables, the engine, and migrations."""
