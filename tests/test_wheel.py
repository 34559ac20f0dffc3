"""A wheel built from the repository, installed into a fresh venv, migrates an empty database.

The migrations live outside the package in the repository (``migrations/``) and are mapped into it
by ``pyproject.toml``; only a real wheel shows that the mapping holds. How the test gets there:

* **Build.** The repository (without ``.git``, virtualenvs, caches and build output) is copied to a
  temporary directory and ``pip wheel --no-deps`` builds it there, so the build neither writes
  ``build/`` and ``*.egg-info`` into the checkout nor picks up stale files a previous build left in
  ``build/lib``. The build is isolated, as any user's: pip fetches ``setuptools`` (the
  ``[build-system]`` requirement) from the configured index, or its cache. The venv's own
  setuptools cannot be used instead: ``make setup`` leaves whatever ``python -m venv`` bundled
  (65.x on Python 3.11, none from 3.12), older than the ``>=77`` the project needs.
* **Install.** A fresh venv (``--without-pip``, which takes a second rather than several) gets the
  wheel from this venv's pip (``pip --python <venv> install --no-deps``), which also writes the
  ``orchestrator`` console script. The dependencies are not downloaded again: a ``.pth`` file adds
  this venv's site-packages *after* the new venv's own. A path line in a ``.pth`` file does not run
  that directory's ``.pth`` files, so an editable install of this checkout there stays inert; a
  regular install would come later on ``sys.path`` than the wheel. Either way the test asserts
  that the ``orchestrator`` that runs is the wheel's.
* **Run.** ``<venv>/bin/orchestrator migrate`` runs with a working directory outside the
  repository and a reduced environment (no ``PYTHONPATH``), against a database without the schema;
  then ``orchestrator roles``, whose SQL is package data (``orchestrator/db/roles.sql``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from orchestrator.db.migrate import alembic_config
from tests.support import scalar

pytestmark = [pytest.mark.db, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = (".git", ".venv", "venv", "build", "dist", "__pycache__", "bench-results")
NOT_SOURCE_PATTERNS = ("*.egg-info", ".*_cache")


def _not_source(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in NOT_SOURCE or any(fnmatch(n, p) for p in NOT_SOURCE_PATTERNS)}


def _run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip()


def _packaged_files(source: Path) -> set[str]:
    """What the wheel must hold: the package's files, and the migrations under the package."""
    files = {
        p.relative_to(source).as_posix()
        for p in (source / "orchestrator").rglob("*")
        if p.suffix in (".py", ".sql") or p.name == "py.typed"
    }
    files |= {
        "orchestrator/migrations/" + p.relative_to(source / "migrations").as_posix()
        for p in (source / "migrations").rglob("*")
        if p.suffix in (".py", ".mako")
    }
    return files


def test_a_wheel_installed_in_a_fresh_venv_migrates_an_empty_database(
    tmp_path: Path, empty_db_url: str
) -> None:
    assert not tmp_path.resolve().is_relative_to(REPO)
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=_not_source, symlinks=True)

    dist = tmp_path / "dist"
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    _run(*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, source)
    [wheel] = dist.glob("batch_orchestrator-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = {n for n in zf.namelist() if not n.startswith("batch_orchestrator-")}
    # Every module and subpackage is there (pyproject.toml lists the packages by hand), the
    # migrations among them, and nothing else: no top-level `migrations` package.
    assert names == _packaged_files(source)

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(*pip, "--python", python, "install", "--quiet", "--no-deps", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_this_venvs_dependencies.pth").write_text("\n".join(ours) + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": "/usr/bin:/bin", "ORCHESTRATOR_DATABASE_URL": empty_db_url}
    where = _run(
        python,
        "-c",
        "import orchestrator; from orchestrator.db import migrate;"
        " print(orchestrator.__file__); print(migrate.script_location())",
        cwd=outside,
        env=env,
    ).split()
    venv_root = venv.resolve()
    assert all(Path(p).resolve().is_relative_to(venv_root) for p in where), where
    assert Path(where[1]).name == "migrations"

    out = _run(venv / "bin" / "orchestrator", "migrate", cwd=outside, env=env)
    assert "up to date" in out
    # the roles script is package data: the wheel's command finds and runs it
    out = _run(venv / "bin" / "orchestrator", "roles", cwd=outside, env=env)
    assert "IN ROLE orchestrator_reporting" in out
    owner = "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'orchestrator'"
    assert scalar(empty_db_url, owner) == "orchestrator_migrator"

    head = ScriptDirectory.from_config(alembic_config(empty_db_url)).get_current_head()
    assert scalar(empty_db_url, "SELECT version_num FROM orchestrator.alembic_version") == head
    assert scalar(empty_db_url, "SELECT to_regclass('orchestrator.jobs')::text") == (
        "orchestrator.jobs"
    )
    assert scalar(empty_db_url, "SELECT to_regclass('orchestrator.job_summary')::text") == (
        "orchestrator.job_summary"
    )
