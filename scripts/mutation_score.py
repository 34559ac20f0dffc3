"""Systematic mutation testing with mutmut: the mutants nobody listed.

``make mutants`` (``scripts/mutants.py``) checks a curated list of bugs, written next to the tests
that catch them. This script lets a tool write the bugs: mutmut (3.x) mutates every function of
the chosen modules (operators, comparisons, constants, strings, arguments, ``and``/``or``, ...),
and each mutant is run against the tests that mutmut's own trace maps to the mutated function.

Two suites:

``pure`` (``make mutation-score``)
    Every mutant of the pure code (``domain/``, the API error mapping, the configuration), run
    against the fast tests (``tests/unit``). A few minutes.
``db`` (``make mutation-db``)
    A seeded random sample (``--sample``, default 400; ``--seed``) of the mutants of the database
    and step code (ledger, queries, steps, runner, ingest, sweep, retention, plan), each run against
    the tests that call the mutated function (``tests/unit``, ``db``, ``api``, ``e2e`` and the
    lifecycle model; the processes a test starts run the mutant too: ``tests/support.child_env``).
    The first run traces the whole suite once (serially) to learn which test calls which
    function.

Each suite works in a copy of the checkout of its own (``.mutation/<suite>/``, ignored by git):
the files git knows (tracked, and untracked ones not ignored) are copied there at each run, and
mutmut's results stay there between runs. Every mutant of the suite's selection is tested again at
each run (results of an earlier run are never reused), so the figures are those of the code and
tests as they are.

The report (``docs/mutation/<suite>.md``) gives the score (a timeout counts as killed: the mutant
made a test hang), the figures per module, and every mutant not killed with its diff and the
reason the README gives for it: the README keeps, between ``<!-- survivors:<suite> -->`` and
``<!-- /survivors:<suite> -->``, a table of the survivors that are equivalent or not worth a test,
naming each. The exit code is 0 only if the score reaches the suite's bar (90 % pure, 80 % db) and
every survivor has its reason there; a survivor without one is a test to write.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
MUTMUT = VENV_BIN / "mutmut"
PYTHON = VENV_BIN / "python"

ALSO_COPY = [
    "scripts", "migrations", "alembic.ini", "deploy", "Makefile", "Dockerfile",
    "docker-compose.yml", "README.md", ".ci",
]  # fmt: skip


@dataclass(frozen=True)
class Suite:
    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]
    bar: float  # the least share of mutants to kill
    sample: int | None = None  # None: every mutant
    # mutmut stops a mutant's tests after (their time in the clean run + constant) x multiplier
    # and counts it killed (it made them hang); mutmut's own 15 x lets a mutant that makes a
    # daemon loop hold a worker for many minutes
    timeout_multiplier: float = 15.0
    timeout_constant: float = 1.0


SUITES = {
    "pure": Suite(
        "pure",
        (
            "orchestrator/domain/backoff.py",
            "orchestrator/domain/budget.py",
            "orchestrator/domain/capacity.py",
            "orchestrator/domain/capacity_report.py",
            "orchestrator/domain/cost.py",
            "orchestrator/domain/decide.py",
            "orchestrator/domain/lines.py",
            "orchestrator/domain/packing.py",
            "orchestrator/domain/requests.py",
            "orchestrator/domain/states.py",
            "orchestrator/api/errors.py",
            "orchestrator/config.py",
        ),
        ("tests/unit",),
        0.90,
    ),
    "db": Suite(
        "db",
        (
            "orchestrator/db/ledger.py",
            "orchestrator/db/queries.py",
            "orchestrator/steps.py",
            "orchestrator/runner.py",
            "orchestrator/ingest.py",
            "orchestrator/sweep.py",
            "orchestrator/retention.py",
            "orchestrator/plan.py",
        ),
        ("tests/unit", "tests/db", "tests/api", "tests/e2e", "tests/model"),
        0.80,
        sample=400,
        timeout_multiplier=5.0,
        timeout_constant=10.0,
    ),
}

# mutmut's statuses (mutmut.stats.status_by_exit_code); a timeout is a kill.
KILLED = {"killed", "timeout"}


def module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


# -- the workspace ---------------------------------------------------------------------------


def repo_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return sorted({f for f in out.decode().split("\0") if f and (REPO / f).is_file()})


def sync(workspace: Path, config: str) -> None:
    """The checkout's files into ``workspace`` (changed ones only, with their times, so that
    mutmut sees which sources changed); files gone from the checkout go from it too (mutmut's own
    ``mutants/`` stays). Then the suite's mutmut settings, in the copy's pyproject.toml."""
    workspace.mkdir(parents=True, exist_ok=True)
    wanted = repo_files()
    for name in wanted:
        src, dst = REPO / name, workspace / name
        if dst.exists() and dst.stat().st_mtime == src.stat().st_mtime and name != "pyproject.toml":
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    keep = set(wanted)
    for path in workspace.rglob("*"):
        rel = path.relative_to(workspace).as_posix()
        if rel.startswith("mutants") or "__pycache__" in rel or not path.is_file():
            continue
        if rel not in keep:
            path.unlink()
    pyproject = workspace / "pyproject.toml"
    pyproject.write_text((REPO / "pyproject.toml").read_text() + config)


def mutmut_config(suite: Suite) -> str:
    def toml_list(items: Iterable[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return (
        "\n\n# written by scripts/mutation_score.py for this workspace\n[tool.mutmut]\n"
        'source_paths = ["orchestrator"]\n'
        f"also_copy = {toml_list(ALSO_COPY)}\n"
        f"only_mutate = {toml_list(suite.modules)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(suite.tests)}\n"
        # in-process: mutmut forks a pytest per mutant (no xdist), and keeps no pytest cache
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist"]\n'
        f"timeout_multiplier = {suite.timeout_multiplier}\n"
        f"timeout_constant = {suite.timeout_constant}\n"
    )


# -- mutants ---------------------------------------------------------------------------------


def generated(suite: Suite, workspace: Path) -> list[str]:
    """Every mutant mutmut makes of the suite's modules, by its full name (as ``mutmut run``
    takes them), from mutmut's own generator (with the workspace's settings)."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    names: list[str] = []
    here = Path.cwd()
    os.chdir(workspace)  # mutmut reads its settings from the current directory
    try:
        for path in suite.modules:
            mutated = mutate_file_contents(path, Path(path).read_text())
            names += [f"{module_of(path)}.{n}" for n in mutated.mutant_names]
    finally:
        os.chdir(here)
    return sorted(names)


def choose(
    suite: Suite, workspace: Path, *, sample: int | None, seed: int, only: Sequence[str]
) -> tuple[list[str], int]:
    """The mutants to run (a seeded sample of them if ``sample``), and how many there are."""
    names = generated(suite, workspace)
    total = len(names)
    if only:
        names = [n for n in names if any(re.fullmatch(_glob(o), n) for o in only)]
    if sample is not None and sample < len(names):
        names = sorted(random.Random(seed).sample(names, sample))
    return names, total


def _glob(pattern: str) -> str:
    return ".*".join(re.escape(p) for p in pattern.split("*"))


def run_mutmut(workspace: Path, names: Sequence[str], jobs: int) -> int:
    """``mutmut run`` of ``names`` (every one is tested again), its output to a log file."""
    log = workspace / "mutmut-run.log"
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    with log.open("w") as out:
        return subprocess.run(
            [str(MUTMUT), "run", "--max-children", str(jobs), *names],
            cwd=workspace, stdout=out, stderr=subprocess.STDOUT, env=env, check=False,
        ).returncode  # fmt: skip


@dataclass
class Outcome:
    status: dict[str, str] = field(default_factory=dict)  # mutant → mutmut's status
    diffs: dict[str, str] = field(default_factory=dict)


def verdicts_file(suite: str) -> Path:
    return REPO / "docs" / "mutation" / f"{suite}-verdicts.json"


def recorded(suite: str) -> dict[str, str]:
    """The verdicts the last report was written from (committed beside it): a new checkout, whose
    workspace has none, continues from them (``--retest-open``, ``--report-only``) instead of
    running every mutant again."""
    path = verdicts_file(suite)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data.get("verdicts", {}).items()}


def read_outcome(
    workspace: Path,
    names: Sequence[str],
    *,
    with_diffs: bool = True,
    fallback: Mapping[str, str] | None = None,
) -> Outcome:
    """mutmut's verdict on each of ``names`` (from its result files; ``fallback`` for those it
    has none on), and the diff of each one not killed."""
    from mutmut.stats import status_by_exit_code

    wanted = set(names)
    outcome = Outcome()
    for meta in (workspace / "mutants").rglob("*.py.meta"):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        for name, code in codes.items():
            if name in wanted and status_by_exit_code[code] != "not checked":
                outcome.status[name] = status_by_exit_code[code]
    for name in wanted - outcome.status.keys():
        outcome.status[name] = (fallback or {}).get(name, "not checked")
    if with_diffs:
        pending = [n for n, s in outcome.status.items() if s not in KILLED]
        outcome.diffs = diffs(workspace, pending)
    return outcome


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    try:
        out[name] = get_diff_for_mutant(name, path=find_mutant(name).path)
    except Exception as exc:  # a mutant mutmut cannot show any more: say so
        out[name] = f"(no diff: {exc})"
json.dump(out, sys.stdout)
"""


def diffs(workspace: Path, names: Sequence[str]) -> dict[str, str]:
    if not names:
        return {}
    proc = subprocess.run(
        [str(PYTHON), "-c", _DIFFS], cwd=workspace, input=json.dumps(sorted(names)),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(proc.stdout))


def changed_lines(diff: str) -> str:
    """The mutant in one line: the removed line → the added one."""
    lines = diff.splitlines()
    minus = [line[1:].strip() for line in lines if line[:1] == "-" and line[:3] != "---"]
    plus = [line[1:].strip() for line in lines if line[:1] == "+" and line[:3] != "+++"]
    if not minus and not plus:
        return diff.strip().splitlines()[-1] if diff.strip() else "?"
    return f"`{' '.join(minus)}` → `{' '.join(plus)}`"


# -- reasons (the README) -----------------------------------------------------------------------


def reasons(suite: str) -> dict[str, str]:
    """Mutant (short name, without ``orchestrator.``) → the reason the README gives for leaving it,
    from the table between ``<!-- survivors:<suite> -->`` and ``<!-- /survivors:<suite> -->``.
    A row names one or more mutants in backticks in its first cell (``domain.x.x_f__mutmut_3``,
    then ``_7`` for ``domain.x.x_f__mutmut_7``); its last cell is the reason."""
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- survivors:{suite} -->(.*?)<!-- /survivors:{suite} -->", text, re.S)
    found: dict[str, str] = {}
    if not match:
        return found
    for row in match.group(1).splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[0]) <= {"-", " ", ":"}:
            continue
        prefix = ""
        for token in re.findall(r"`([^`]+)`", cells[0]):
            if re.fullmatch(r"_\d+", token) and prefix:
                found[prefix + token[1:]] = cells[-1]
            elif "__mutmut_" in token:
                prefix = token[: token.rindex("_") + 1]
                found[token] = cells[-1]
    return found


def short(name: str) -> str:
    return name.removeprefix("orchestrator.")


# -- the report --------------------------------------------------------------------------------


def report(
    suite: Suite, names: Sequence[str], outcome: Outcome, *, seconds: float, seed: int,
    sample: int | None, total: int,
) -> tuple[str, bool]:  # fmt: skip
    """The report's Markdown, and whether the suite passes."""
    given = reasons(suite.name)
    by_module: dict[str, Counter[str]] = {}
    for name, status in outcome.status.items():
        module = name.rsplit(".", 1)[0]
        by_module.setdefault(module, Counter())[status] += 1
    killed = sum(1 for s in outcome.status.values() if s in KILLED)
    score = killed / len(names) if names else 1.0
    open_ = sorted(n for n, s in outcome.status.items() if s not in KILLED)
    unexplained = [n for n in open_ if short(n) not in given]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    which = (
        f"a random sample of {len(names)} of the {total} mutants mutmut makes of them (seed {seed})"
        if sample is not None and sample < total
        else f"every one of the {total} mutants mutmut makes of them"
    )
    lines = [
        f"# Mutation score: {suite.name} code",
        "",
        f"Written by `scripts/mutation_score.py --suite {suite.name}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, at commit `{commit}`"
        + (" with uncommitted changes" if dirty else "")
        + f", in {seconds / 60:.1f} minutes.",
        "",
        f"Modules: {', '.join(f'`{m}`' for m in suite.modules)}; {which}; each run against the "
        f"tests of {', '.join(f'`{t}`' for t in suite.tests)} that mutmut traced calling the "
        "mutated function.",
        "",
        f"**Score: {killed} of {len(names)} killed ({100 * score:.1f} %)**; the bar is "
        f"{100 * suite.bar:.0f} %. A timeout counts as killed.",
        "",
        "| module | mutants | killed | timeout | survived | no tests | other | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for module in sorted(by_module):
        c = by_module[module]
        n = sum(c.values())
        other = n - c["killed"] - c["timeout"] - c["survived"] - c["no tests"]
        lines.append(
            f"| `{module}` | {n} | {c['killed']} | {c['timeout']} | {c['survived']} | "
            f"{c['no tests']} | {other} | {100 * (c['killed'] + c['timeout']) / n:.1f} % |"
        )
    lines += ["", f"## Not killed ({len(open_)})", ""]
    if not open_:
        lines.append("None.")
    for name in open_:
        why = given.get(short(name), "**no reason in the README: a test to write**")
        change = changed_lines(outcome.diffs.get(name, ""))
        lines.append(f"- `{short(name)}` ({outcome.status[name]}): {change}. {why}")
    passed = score >= suite.bar and not unexplained
    lines += [
        "",
        f"Result: {'PASS' if passed else 'FAIL'} ({len(unexplained)} not killed without a reason "
        "in the README).",
        "",
    ]
    return "\n".join(lines), passed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="pure")
    parser.add_argument("--sample", type=int, default=None, help="how many mutants (db: 400)")
    parser.add_argument("--seed", type=int, default=23, help="seed of the sample")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants at once")
    parser.add_argument(
        "--only", action="append", default=[], help="only mutants matching this glob (repeatable)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the report of the last run, run nothing"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="run only the mutants the workspace has no verdict on yet (an interrupted run)",
    )
    parser.add_argument(
        "--retest-open",
        action="store_true",
        help="run again only the mutants the last run did not kill (after tests were added: a "
        "new test can only kill more)",
    )
    parser.add_argument("--output", type=Path, default=None, help="the report (a Markdown file)")
    parser.add_argument(
        "--workspace", type=Path, default=None, help="the copy to run in (default .mutation/SUITE)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    suite = SUITES[args.suite]
    sample = args.sample if args.sample is not None else suite.sample
    workspace = args.workspace or REPO / ".mutation" / suite.name
    output = args.output or REPO / "docs" / "mutation" / f"{suite.name}.md"
    started = time.monotonic()
    before = recorded(suite.name)
    if not args.report_only:
        sync(workspace, mutmut_config(suite))
    names, total = choose(suite, workspace, sample=sample, seed=args.seed, only=args.only)
    print(f"mutation-score {suite.name}: {len(names)} of {total} mutants, workspace {workspace}")
    if not args.report_only:
        todo = names
        if args.resume or args.retest_open:
            seen = read_outcome(workspace, names, with_diffs=False, fallback=before).status
            if args.resume:
                todo = [n for n in names if seen[n] == "not checked"]
                print(f"resuming: {len(todo)} of {len(names)} mutants have no verdict yet")
            else:
                todo = [n for n in names if seen[n] not in KILLED]
                print(f"testing again the {len(todo)} of {len(names)} mutants not killed")
        code = run_mutmut(workspace, todo, args.jobs) if todo else 0
        if code != 0:
            print(f"mutmut exited {code}: see {workspace / 'mutmut-run.log'}", file=sys.stderr)
            return 2
    # The time the mutants took, kept with the workspace: --resume and --retest-open add theirs to
    # the run they continue, and --report-only quotes it rather than its own fraction of a second.
    spent = workspace / "mutation-seconds"
    seconds = float(spent.read_text()) if spent.exists() else 0.0
    if not args.report_only:
        ran = time.monotonic() - started
        seconds = seconds + ran if (args.resume or args.retest_open) else ran
        spent.write_text(f"{seconds:.1f}\n")
    outcome = read_outcome(workspace, names, fallback=before)
    text, passed = report(
        suite, names, outcome, seconds=seconds, seed=args.seed, sample=sample, total=total
    )
    if not args.only:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        verdicts_file(suite.name).write_text(
            json.dumps({"verdicts": dict(sorted(outcome.status.items()))}, indent=0) + "\n"
        )
        print(f"report: {output.relative_to(REPO)}")
    for line in text.splitlines():
        if line.startswith(("**Score", "Result", "- `")):
            print(line)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
