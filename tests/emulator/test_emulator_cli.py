"""The options the cli owner wires into `orchestrator emulator`, and the --fault syntax."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.clock import ManualClock
from orchestrator.emulator import Emulator, add_arguments, parse_fault_spec, run_from_args
from orchestrator.emulator.server import config_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments_build_the_config() -> None:
    args = parse(
        "--mode", "openai", "--port", "0", "--time-scale", "600", "--seed", "9",
        "--failure-rate", "0.1", "--prefix", "", "--enqueued-token-limit", "2000000",
        "--output-order", "shuffled", "--max-requests", "100", "--max-file-bytes", "4096",
        "--completion-window-seconds", "60", "--cancel-seconds", "1",
    )  # fmt: skip

    config = config_from_args(args)

    assert (args.port, args.time_scale) == (0, 600.0)
    assert (config.mode, config.seed, config.line_failure_rate) == ("openai", 9, 0.1)
    assert config.path_prefix == ""
    assert config.enqueued_token_limit == 2_000_000
    assert (config.output_order, config.max_requests_per_file) == ("shuffled", 100)
    assert (config.max_file_bytes, config.completion_window_seconds) == (4096, 60)
    assert config.cancel_seconds == 1


def test_defaults_are_fastrouter_on_loopback() -> None:
    args = parse()

    assert (args.mode, args.host, args.prefix, args.time_scale) == (
        "fastrouter",
        "127.0.0.1",
        "/v1",
        1.0,
    )
    assert (args.fault, args.port_file, config_from_args(args).enqueued_token_limit) == (
        [],
        None,
        None,
    )


def test_invalid_settings_exit_with_code_2() -> None:
    assert run_from_args(parse("--failure-rate", "1.5")) == 2
    assert run_from_args(parse("--time-scale", "0")) == 2
    assert run_from_args(parse("--fault", "nonsense")) == 2
    assert run_from_args(parse("--fault", "no_such_route:status=500")) == 2
    assert run_from_args(parse("--fault", "get_batch:status=418")) == 2
    assert run_from_args(parse("--fault", "batch:line_429=2")) == 2


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "create_batch:status=429,retry_after=30,times=3",
            {"route": "create_batch", "status": 429, "retry_after": 30, "times": 3},
        ),
        (
            "get_batch:delay=5,probability=0.1",
            {"route": "get_batch", "delay_seconds": 5, "probability": 0.1, "times": None},
        ),
        ("file_content:truncate=0.5", {"route": "file_content", "truncate": 0.5, "times": None}),
        ("upload_file:not_ready=10", {"route": "upload_file", "not_ready": 10, "times": None}),
        (
            "batch:stuck_finalizing=forever,shuffle,times=inf",
            {
                "route": "create_batch",
                "kind": "batch",
                "stuck_finalizing": "forever",
                "shuffle": True,
                "times": None,
            },
        ),
        ("*:status=503,times=always", {"route": "*", "status": 503, "times": None}),
    ],
)
def test_fault_specs_parse_to_admin_json(spec: str, expected: dict[str, Any]) -> None:
    assert parse_fault_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "kind", "route", "check"),
    [
        ("create_batch:status=429,retry_after=30,times=3", "status", "create_batch", "times"),
        ("get_batch:delay=5,probability=0.1", "delay", "get_batch", "probability"),
        ("file_content:truncate=0.5", "truncate", "file_content", "truncate"),
        ("upload_file:not_ready=10", "not_ready", "upload_file", "not_ready"),
        ("batch:stuck_finalizing=300", "batch", "create_batch", "stuck_finalizing"),
        (
            "batch:line_429=0.1,line_500=0.05,missing_lines=0.01",
            "batch",
            "create_batch",
            "line_500",
        ),
        ("create_batch:duplicate_lines=0.1,no_usage", "batch", "create_batch", "no_usage"),
        ("batch:empty_error_file_id", "batch", "create_batch", "empty_error_file_id"),
    ],
)
def test_every_fault_kind_is_reachable_from_the_cli(
    spec: str, kind: str, route: str, check: str
) -> None:
    with Emulator(clock=ManualClock()) as emulator:
        rule = emulator.faults.add_json(parse_fault_spec(spec)).to_json()

    assert (rule["kind"], rule["route"]) == (kind, route)
    assert rule[check] not in (None, 0, False)


def test_stuck_forever_from_the_cli_is_infinite() -> None:
    with Emulator(clock=ManualClock()) as emulator:
        rule = emulator.faults.add_json(parse_fault_spec("batch:stuck_finalizing=inf"))

    assert rule.fault.stuck_finalizing == math.inf  # type: ignore[attr-defined]


def test_the_command_serves_with_faults_writes_its_port_and_cleans_up(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    command = [
        sys.executable, "-m", "orchestrator", "emulator", "--port", "0",
        "--port-file", str(port_file), "--mode", "openai", "--log-level", "warning",
        "--fault", "get_batch:status=503,times=1", "--fault", "batch:no_usage",
        "--enqueued-token-limit", "1000", "--storage-dir", str(tmp_path / "store"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        faults = httpx.get(f"{base}/_emulator/faults").json()["rules"]
        first = httpx.get(f"{base}/v1/batches/batch_x", headers={"Authorization": "Bearer k"})
        second = httpx.get(f"{base}/v1/batches/batch_x", headers={"Authorization": "Bearer k"})
        stored_while_running = list((tmp_path / "store").iterdir())
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)

    assert [(rule["kind"], rule["times"]) for rule in faults] == [("status", 1), ("batch", None)]
    assert (first.status_code, second.status_code) == (503, 404)
    assert process.returncode == 0
    assert b"2 fault rule(s)" in stderr
    # SIGTERM still lets the emulator delete its files
    assert len(stored_while_running) == 1
    assert list((tmp_path / "store").iterdir()) == []
