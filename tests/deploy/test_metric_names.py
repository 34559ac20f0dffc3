"""Every metric the alert rules and the Grafana dashboard name exists in a real ``/metrics`` scrape.

The scrape is of ``orchestrator run`` as a process, with its metrics port on, after it ran a job
against the emulator. The process runs under the seccomp rule of the systemd unit's
``MemoryDenyWriteExecute=yes`` (``wx_guard.py``), so the same job also shows that CPython,
psycopg's binary wheel, orjson, uvicorn and httpx work under it: an import, a download, an ingest
or an HTTP answer that needed writable executable memory would fail the job or the scrape.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from orchestrator.clock import ScaledClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from tests.deploy.rules import rules
from tests.support import (
    API_KEY,
    DaemonProcess,
    child_env,
    enqueue,
    scalar,
    simple_requests,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
WX_GUARD = Path(__file__).with_name("wx_guard.py")

# Series Prometheus makes itself, not the daemon.
FROM_PROMETHEUS = {"up"}
# Labels Prometheus attaches to every series of a scrape.
TARGET_LABELS = {"job", "instance"}

# PromQL words that are not metric names: keywords, and the function and aggregation names are
# recognised by the "(" that follows them.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "start", "end",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")  # Grafana's $__rate_interval, ${DS_PROMETHEUS}
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_NUMBER = re.compile(r"(?<![\w:.])(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![\w:])")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for m in _IDENTIFIER.finditer(text):
        if m.group().lower() in KEYWORDS or text[m.end() :].lstrip().startswith("("):
            continue
        names.add(m.group())
    return names


def label_matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """``(metric, label, operator, value)`` of every matcher in a selector ``metric{...}``."""
    found = []
    for selector in _SELECTOR.finditer(expr):
        for m in _MATCHER.finditer(selector.group(2)):
            found.append((selector.group(1), m.group(1), m.group(2), m.group(3)))
    return found


def rule_expressions() -> list[str]:
    return [rule.expr for rule in rules()]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(SELECTOR, LABEL): the selector is PromQL, the label is not
            inner = variable["definition"].removeprefix("label_values(").removesuffix(")")
            exprs.append(inner.rpartition(",")[0] or inner)
    return exprs


class Scrape:
    """A ``/metrics`` text: each family's type, and the label sets of its samples."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[str, list[dict[str, str]]] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind
            elif line and not line.startswith("#"):
                name, _, rest = line.partition("{")
                name = name.split(" ")[0]
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest.rpartition("}")[0]))
                self.samples.setdefault(name, []).append(labels)

    def has(self, name: str) -> bool:
        if name in self.types:
            return True
        base, _, suffix = name.rpartition("_")
        return self.types.get(base) == "histogram" and suffix in ("bucket", "count", "sum")

    def missing(self, names: set[str]) -> list[str]:
        return sorted(n for n in names - FROM_PROMETHEUS if not self.has(n))

    def wrong_matchers(self, matchers: list[tuple[str, str, str, str]]) -> list[str]:
        """Matchers on a label that the metric's samples lack, or on an exact value none has."""
        wrong = []
        for metric, label, op, value in matchers:
            samples = self.samples.get(metric)
            if metric in FROM_PROMETHEUS or label in TARGET_LABELS or not samples:
                continue
            if not any(label in s for s in samples):
                wrong.append(f"{metric}{{{label}}}: no such label")
            elif op == "=" and not any(s.get(label) == value for s in samples):
                wrong.append(f'{metric}{{{label}="{value}"}}: no such value')
        return wrong


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.95, sum by (le, target) (rate(a_seconds_bucket"
            '{job="j", instance=~"$instance"}[$__rate_interval])))',
            {"a_seconds_bucket"},
        ),
        ("time() - last_tick_timestamp_seconds > 60", {"last_tick_timestamp_seconds"}),
        (
            'sum by (target) (rate(req_total{status=~"5..|error"}[10m]))'
            " / sum by (target) (rate(req_total[10m])) > 0.2",
            {"req_total"},
        ),
        ("max(age_seconds) > 26 * 3600", {"age_seconds"}),
        ('up{job="batch-orchestrator"} == 0', {"up"}),
        ("x_total * on(instance) group_left(version) build_info", {"x_total", "build_info"}),
        ("1e3 * foo offset 5m + bar:rate5m", {"foo", "bar:rate5m"}),
        ("count without (le) (bar) > bool 0.5", {"bar"}),
        ('label_replace(baz, "dst", "$1", "src", "(.*)")', {"baz"}),
        ("sum(rate(cpu_seconds_total[5m])) by (instance) * 100", {"cpu_seconds_total"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_name_or_label_missing_from_the_scrape_is_reported() -> None:
    scrape = Scrape(
        '# TYPE a_total counter\na_total{status="200"} 1.0\n'
        '# TYPE h_seconds histogram\nh_seconds_bucket{le="+Inf"} 1.0\n'
    )
    assert scrape.missing({"a_total", "h_seconds_bucket", "h_seconds_count", "up"}) == []
    assert scrape.missing({"a", "b_total", "a_total_bucket"}) == ["a", "a_total_bucket", "b_total"]
    matchers = label_matchers(
        'a_total{status="500", route="/x", instance=~"$i"} + a_total{status="200"}'
    )
    assert scrape.wrong_matchers(matchers) == [
        'a_total{status="500"}: no such value',
        "a_total{route}: no such label",
    ]


def test_the_rules_and_the_dashboard_name_only_metrics_a_running_daemon_serves(
    db_url: str, tmp_path: Path
) -> None:
    exprs = rule_expressions() + dashboard_expressions()
    named = set().union(*(metric_names(e) for e in exprs))
    assert len(named) >= 20, named  # the extraction found the queries

    # Given a daemon process under the W^X rule, metrics on, that ran a job to the end
    config = EmulatorConfig(api_key=API_KEY, seed=5)
    with Emulator(config, ScaledClock(60)) as emulator, EmulatorServer(emulator) as server:
        # (with a budget and a call cap, so that the capacity series are there to name)
        capacity = {
            "enqueued_token_budgets": {"openai/gpt-4.1-nano": 10_000_000},
            "max_calls_per_minute": 10_000,
        }
        daemon = GuardedDaemon(
            db_url, server.base_url, tmp_path, http_addr="127.0.0.1:0", target=capacity
        ).start()
        try:
            job = enqueue(db_url, simple_requests(5))
            done = wait_for(
                lambda: (
                    scalar(db_url, "SELECT status FROM orchestrator.jobs WHERE id = %s", job)
                    == "completed"
                ),
                timeout=60,
            )
            assert done, daemon.logs()[-3000:]
            assert _seccomp_mode(daemon.pid) == 2  # the filter is on the daemon itself
            # When Prometheus would scrape it
            url = daemon.http_url()
            health = urllib.request.urlopen(f"{url}/healthz", timeout=10)
            assert health.status == 200
            text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read()
        finally:
            daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, daemon.logs()[-3000:]

    # Then every name the rules and the dashboard use is there, with the labels they select on
    scrape = Scrape(text.decode())
    missing = scrape.missing(named)
    assert not missing, f"named by deploy/ but not served by the daemon: {missing}"
    wrong = scrape.wrong_matchers([m for e in exprs for m in label_matchers(e)])
    assert not wrong, f"selected on by deploy/ but not in the scrape: {wrong}"


def test_the_guard_refuses_writable_executable_memory() -> None:
    # the negative control: under the guard, what MemoryDenyWriteExecute forbids fails
    probe = (
        "import ctypes, mmap\n"
        "m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)\n"
        "page = ctypes.addressof(ctypes.c_char.from_buffer(m))\n"
        "print(libc.mprotect(page, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC),"
        " ctypes.get_errno())\n"
        "mmap.mmap(-1, mmap.PAGESIZE, prot=7)\n"
    )
    free = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert free.returncode == 0 and free.stdout.split() == ["0", "0"], free.stderr
    guarded = subprocess.run(
        [sys.executable, str(WX_GUARD), sys.executable, "-c", probe],
        capture_output=True,
        text=True,
    )
    assert guarded.stdout.split() == ["-1", "1"]  # mprotect(PROT_EXEC): EPERM
    assert guarded.returncode == 1 and "PermissionError" in guarded.stderr


class GuardedDaemon(DaemonProcess):
    """``orchestrator run`` as DaemonProcess starts it, under ``wx_guard.py``."""

    def start(self) -> GuardedDaemon:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(WX_GUARD), sys.executable, "-m", "orchestrator", "run"],
                env=child_env(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        return self


def _seccomp_mode(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Seccomp:\s*(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
