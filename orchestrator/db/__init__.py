"""The database layer: typed models, sessions, and the session-first query functions."""
