"""Batch and file ids: reproducible for a seed in process, never repeated by a restarted server."""

from __future__ import annotations

import argparse

from orchestrator.emulator.ids import IdGenerator
from orchestrator.emulator.server import add_arguments, config_from_args


def _ids(seed: int, instance: str) -> list[str]:
    ids = IdGenerator(seed, instance)
    return [ids.next("batch", "batch_") for _ in range(3)]


def test_the_same_seed_and_instance_give_the_same_ids() -> None:
    assert _ids(0, "") == _ids(0, "")
    assert _ids(0, "run-a") == _ids(0, "run-a")


def test_another_instance_gives_other_ids_with_the_same_seed() -> None:
    assert not set(_ids(0, "run-a")) & set(_ids(0, "run-b"))
    assert not set(_ids(0, "")) & set(_ids(0, "run-a"))


def test_each_run_of_the_command_gets_ids_of_its_own_unless_told_otherwise() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    first, second = (config_from_args(parser.parse_args(["--seed", "0"])) for _ in range(2))
    assert first.instance and second.instance and first.instance != second.instance
    pinned = config_from_args(parser.parse_args(["--seed", "0", "--instance", "fixed"]))
    assert pinned.instance == "fixed"
