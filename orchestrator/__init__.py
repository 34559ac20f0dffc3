"""batch-orchestrator: a durable daemon that runs LLM Batch API work from PostgreSQL."""

from __future__ import annotations

__version__ = "0.1.0"
