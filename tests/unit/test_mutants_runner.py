"""The mutation runner's own logic (scripts/mutants.py): edits, staleness, verdicts."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutants.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutants_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


mutants = _load()


def test_an_edit_applies_only_when_its_text_occurs_exactly_once() -> None:
    assert mutants.apply_edits("a = 1\nb = 2\n", [("b = 2", "b = 3")], "f.py") == "a = 1\nb = 3\n"
    with pytest.raises(mutants.Stale, match="0 occurrences"):
        mutants.apply_edits("a = 1\n", [("b = 2", "b = 3")], "f.py")
    with pytest.raises(mutants.Stale, match="2 occurrences"):
        mutants.apply_edits("x\nx\n", [("x", "y")], "f.py")


def test_several_edits_apply_in_order_each_exactly_once() -> None:
    text = "fence()\ningest()\nrelease()\n"
    edits = [("fence()\n", ""), ("ingest()\n", "ingest()\ncommit()\n")]
    assert mutants.apply_edits(text, edits, "f.py") == "ingest()\ncommit()\nrelease()\n"


def test_verdicts_from_pytest_exit_codes() -> None:
    failed = "..F\nFAILED tests/db/test_claim.py::test_x[a] - AssertionError: no\n1 failed\n"
    caught = mutants.classify("m", 1, failed, 3.0)
    assert (caught.status, caught.by) == ("caught", "tests/db/test_claim.py::test_x[a]")
    assert mutants.classify("m", 0, "3 passed\n", 1.0).status == "NOT caught"
    broken = "FAILED tests/a.py::test_y - ImportError: cannot import name 'z'\n"
    assert mutants.classify("m", 1, broken, 1.0).status == "error"
    assert mutants.classify("m", 1, "ERROR tests/a.py::test_y - boom\n", 1.0).status == "error"
    for code in (2, 3, 4, 5, -9):
        assert mutants.classify("m", code, "", 1.0).status == "error"


def test_the_mutation_list_is_well_formed() -> None:
    names = [m.name for m in mutants.MUTATIONS]
    assert len(names) == len(set(names))
    for m in mutants.MUTATIONS:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", m.name), m.name
        assert m.tests and m.promise and m.old
        assert all(old != new for old, new in m.edits()), m.name
