"""The orchestrator's own exceptions (the Batch API's are in :mod:`orchestrator.api.errors`).

::

    OrchestratorError
    ├── ConfigError          bad or missing settings at startup (exit code 2)
    ├── UsageError           a command-line argument that cannot be used: a file that cannot be
    │                        read, ... (exit code 2)
    ├── JobNotFound          a CLI command named a job that does not exist (exit code 2)
    ├── BatchNotFound        a CLI command named a batch that does not exist (exit code 2)
    ├── DatabaseUnavailable  the database cannot be reached or refused the connection (exit 1)
    ├── SchemaNotReady       the database's schema is not at the revision of this code (exit 1)
    ├── StartupRefused       the daemon cannot start as configured (its port is taken) (exit 1)
    ├── LeaseLost            a fenced write matched no row: another worker owns the batch now
    ├── IllegalTransition    a write would move a batch along an edge the state table lacks
    └── RemoteIdTaken        the provider answered a create with a batch id another batch has

The CLI prints any of them as one line, ``orchestrator: <what is wrong>; <what to do>``: their
messages are written to be read by the person who typed the command.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of the orchestrator's exceptions."""


class ConfigError(OrchestratorError):
    """The configuration is invalid or incomplete."""


class UsageError(OrchestratorError):
    """A command-line argument names something that cannot be used (a file that does not exist)."""


class JobNotFound(OrchestratorError):
    """No job with that id."""


class BatchNotFound(OrchestratorError):
    """No batch with that id."""


class DatabaseUnavailable(OrchestratorError):
    """The database did not accept a connection (down, refused, unknown database, bad password).
    The message names its host, port and database, never its password."""


class SchemaNotReady(OrchestratorError):
    """The database's schema is missing, older than this code (``orchestrator migrate``) or newer
    (a newer version of the package migrated it)."""


class StartupRefused(OrchestratorError):
    """The daemon refused to start: something it needs is taken (its /metrics address)."""


class LeaseLost(OrchestratorError):
    """A fenced write matched no row: the lease expired and another worker took the batch."""


class IllegalTransition(OrchestratorError):
    """A fenced write asked for a state move that ``domain.states.BATCH_TRANSITIONS`` does not
    allow from the state the batch is in: a bug, refused by the database write itself."""


class RemoteIdTaken(OrchestratorError):
    """The provider answered a create with a batch id that another local batch already has: it
    re-issued an id (a provider, or an emulator, that restarted). Never taken for an unknown
    outcome, which would create again and pay twice."""
