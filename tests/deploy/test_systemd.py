"""The systemd units: ``systemd-analyze verify`` clean, ``security`` exposure at most 4.0, and what
the README promises of them (migration apart from the daemon, by the migration role; a stop that
outlasts the daemon's grace period; the spool in the state directory; a rollback that works).

``verify`` runs against a scratch root (``--root``) laid out as the README installs: the units in
``/etc/systemd/system``, the release's virtualenv under ``/opt/batch-orchestrator`` (stub
executables, which is what verify looks at), and this machine's own systemd units for the targets
they refer to. The tools must be here (``.ci/run`` installs them): a missing tool fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from orchestrator.config import DaemonSettings
from orchestrator.db.migrate import alembic_config
from tests.support import scalar

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DAEMON = DEPLOY / "orchestrator.service"
MIGRATE = DEPLOY / "orchestrator-migrate.service"
DOWNGRADE = DEPLOY / "orchestrator-downgrade@.service"
UNITS = (DAEMON, MIGRATE, DOWNGRADE)
VENV = "/opt/batch-orchestrator/current"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 4.0


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: .ci/run installs it (apt-get install systemd)"
    return tool


def directives(unit: Path) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` in file order."""
    section, found = "", []
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(unit: Path, key: str) -> list[str]:
    return [v for _, k, v in directives(unit) if k == key]


def the(unit: Path, key: str) -> str:
    found = values(unit, key)
    assert len(found) == 1, (unit.name, key, found)
    return found[0]


def exec_argv(unit: Path, key: str = "ExecStart") -> list[str]:
    return shlex.split(the(unit, key))


def test_verify_is_clean_for_every_unit(tmp_path: Path) -> None:
    tool = systemd_analyze()
    root = tmp_path / "root"
    assert SYSTEM_UNITS.is_dir(), "systemd's own units are missing: apt-get install systemd"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    # every program the units run, as a stub in the scratch root
    release = root / "opt/batch-orchestrator/releases/1"
    (release / "bin").mkdir(parents=True)
    (root / "opt/batch-orchestrator/current").symlink_to("releases/1")
    for unit in UNITS:
        for key in ("ExecStartPre", "ExecStart"):
            for line in values(unit, key):
                program = root / shlex.split(line)[0].lstrip("/")
                program.parent.mkdir(parents=True, exist_ok=True)
                program.write_text("#!/bin/sh\n")
                program.chmod(0o755)
    names = [DAEMON.name, MIGRATE.name, DOWNGRADE.name.replace("@", "@0005")]
    proc = subprocess.run(
        [tool, "verify", f"--root={root}", *names], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_security_exposure_is_at_most_4(unit: Path) -> None:
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--threshold=40", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"},
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    exposure = float(found.group(1))
    print(f"{unit.name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE
    assert proc.returncode == 0, proc.stderr  # --threshold=40 agrees


def test_the_units_share_one_sandbox() -> None:
    # the hardening is written three times: it must stay the same
    def sandbox(unit: Path) -> list[tuple[str, str]]:
        service = [(k, v) for section, k, v in directives(unit) if section == "Service"]
        first = [k for k, _ in service].index("NoNewPrivileges")
        return service[first:]

    assert len(sandbox(DAEMON)) > 25
    assert sandbox(MIGRATE) == sandbox(DAEMON)
    assert sandbox(DOWNGRADE) == sandbox(DAEMON)


def test_the_daemon_unit_restarts_on_failure_and_outlasts_the_shutdown_grace() -> None:
    assert exec_argv(DAEMON) == [f"{VENV}/bin/orchestrator", "run"]
    assert the(DAEMON, "User") == "orchestrator"
    assert the(DAEMON, "Restart") == "on-failure"
    assert the(DAEMON, "KillSignal") == "SIGTERM"
    assert the(DAEMON, "RestartPreventExitStatus") == "2"  # a config error: no restart loop
    grace = DaemonSettings().shutdown_grace_seconds
    assert float(the(DAEMON, "TimeoutStopSec").removesuffix("s")) > grace
    assert float(the(DAEMON, "RestartSec").removesuffix("s")) >= 5
    assert the(DAEMON, "EnvironmentFile") == "/etc/orchestrator/orchestrator.env"
    # spooled uploads and downloads go to the state directory, cleaned before each start
    state = the(DAEMON, "StateDirectory").split()
    tmpdir = the(DAEMON, "Environment").removeprefix("TMPDIR=")
    assert tmpdir.startswith("%S/") and tmpdir.removeprefix("%S/") in state
    assert exec_argv(DAEMON, "ExecStartPre") == [
        "/usr/bin/find",
        tmpdir,
        "-mindepth",
        "1",
        "-delete",
    ]


def test_migration_is_a_separate_one_shot_by_the_migration_role() -> None:
    # the daemon never migrates, nor pulls the migration in: the operator starts it
    everything = " ".join(f"{k}={v}" for _, k, v in directives(DAEMON))
    assert "migrate" not in " ".join(values(DAEMON, "ExecStartPre") + values(DAEMON, "ExecStart"))
    for key in ("Requires", "Wants", "BindsTo", "Requisite", "Upholds"):
        assert "orchestrator-migrate" not in " ".join(values(DAEMON, key)), everything
    assert "orchestrator-migrate.service" in the(DAEMON, "After")  # if both start together
    for unit in (MIGRATE, DOWNGRADE):
        assert the(unit, "Type") == "oneshot"
        assert not values(unit, "RemainAfterExit")  # each start runs it again
        assert not values(unit, "WantedBy")  # never at boot
        # its own URL (the migrator's login), not the daemon's environment file with the keys
        assert the(unit, "EnvironmentFile") == "/etc/orchestrator/migrate.env"
    assert exec_argv(MIGRATE) == [f"{VENV}/bin/orchestrator", "migrate"]


def test_the_downgrade_unit_takes_the_schema_to_the_previous_revision(db_url: str) -> None:
    # Given a database at the head revision, and the revision before it (the previous release's)
    script = ScriptDirectory.from_config(alembic_config(db_url))
    head = script.get_current_head()
    previous = script.get_revision(head).down_revision
    assert isinstance(previous, str)
    version = "SELECT version_num FROM orchestrator.alembic_version"
    assert scalar(db_url, version) == head
    # When the operator starts orchestrator-downgrade@<previous>: the unit's own command line,
    # with this venv's Python for the release's, and its environment file's variable
    argv = [
        sys.executable if a == f"{VENV}/bin/python" else a.replace("%i", previous)
        for a in exec_argv(DOWNGRADE)
    ]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "ORCHESTRATOR_DATABASE_URL": db_url}
    proc = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=120)
    # Then the schema is at that revision, and says so
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"schema orchestrator is at revision {previous}"
    assert scalar(db_url, version) == previous
