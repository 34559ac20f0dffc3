"""``orchestrator migrate``: alembic, driven from code (no alembic.ini needed).

The migration scripts live at the top of the repository (``migrations/``, next to
``alembic.ini``); a wheel installs them as the package ``orchestrator.migrations``. Both places are
found from this file's location, not by importing ``orchestrator.migrations``: in a checkout with an
editable install of *another* checkout, that import could resolve through the other checkout's
finder and migrate with its scripts.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from orchestrator.errors import OrchestratorError

_PACKAGE = Path(__file__).resolve().parent.parent  # .../orchestrator
INSTALLED = _PACKAGE / "migrations"  # from a wheel: site-packages/orchestrator/migrations
CHECKOUT = _PACKAGE.parent / "migrations"  # from a checkout: <repo>/migrations


class MigrationsNotFound(OrchestratorError):
    """Neither place holds the scripts (a broken install): ``orchestrator migrate`` exits 1."""


def script_location() -> Path:
    """The directory holding alembic's ``env.py`` and ``versions/``.

    The installed place comes first: next to an installed package, ``site-packages/migrations``
    could be some other distribution's. A directory counts only if it holds ``env.py`` (a checkout
    that predates the move may still hold an ``orchestrator/migrations/__pycache__``).
    """
    for candidate in (INSTALLED, CHECKOUT):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationsNotFound(
        "the migration scripts are missing: neither "
        f"{INSTALLED} (an installed wheel) nor {CHECKOUT} (a checkout) holds env.py"
    )


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Safe to run twice, and from two processes at once."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
