"""The orchestrator's own exceptions (the Batch API's are in :mod:`orchestrator.api.errors`).

::

    OrchestratorError
    ├── ConfigError        bad or missing settings at startup (exit code 2)
    ├── JobNotFound        a CLI command named a job that does not exist
    ├── LeaseLost          a fenced write matched no row: another worker owns the batch now
    ├── IllegalTransition  a write would move a batch along an edge the state table lacks
    └── RemoteIdTaken      the provider answered a create with a batch id another batch has
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of the orchestrator's exceptions."""


class ConfigError(OrchestratorError):
    """The configuration is invalid or incomplete."""


class JobNotFound(OrchestratorError):
    """No job with that id."""


class LeaseLost(OrchestratorError):
    """A fenced write matched no row: the lease expired and another worker took the batch."""


class IllegalTransition(OrchestratorError):
    """A fenced write asked for a state move that ``domain.states.BATCH_TRANSITIONS`` does not
    allow from the state the batch is in: a bug, refused by the database write itself."""


class RemoteIdTaken(OrchestratorError):
    """The provider answered a create with a batch id that another local batch already has: it
    re-issued an id (a provider, or an emulator, that restarted). Never taken for an unknown
    outcome, which would create again and pay twice."""
