"""The options the cli owner wires into `orchestrator emulator`."""

from __future__ import annotations

import argparse

from orchestrator.emulator import add_arguments, run_from_args
from orchestrator.emulator.server import config_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments_build_the_config() -> None:
    args = parse(
        "--mode", "openai", "--port", "0", "--time-scale", "600", "--seed", "9",
        "--failure-rate", "0.1", "--prefix", "",
    )  # fmt: skip

    config = config_from_args(args)

    assert (args.port, args.time_scale) == (0, 600.0)
    assert (config.mode, config.seed, config.line_failure_rate) == ("openai", 9, 0.1)
    assert config.path_prefix == ""


def test_defaults_are_fastrouter_on_loopback() -> None:
    args = parse()

    assert (args.mode, args.host, args.prefix, args.time_scale) == (
        "fastrouter",
        "127.0.0.1",
        "/v1",
        1.0,
    )


def test_invalid_settings_exit_with_code_2() -> None:
    assert run_from_args(parse("--failure-rate", "1.5")) == 2
    assert run_from_args(parse("--time-scale", "0")) == 2
