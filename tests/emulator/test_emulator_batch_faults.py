"""Batch faults: a rule on create_batch that shapes the batches it creates (spec §8)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.emulator import BatchFault

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


def files_of(api: Api, batch: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The parsed output and error files of a finished batch ([] for a missing file)."""
    output = (
        api.parse_jsonl(api.content(batch["output_file_id"])) if batch["output_file_id"] else []
    )
    errors = api.parse_jsonl(api.content(batch["error_file_id"])) if batch["error_file_id"] else []
    return output, errors


def ids(lines: list[dict[str, Any]]) -> list[str]:
    return [line["custom_id"] for line in lines]


# -- stuck in finalizing (X5) -------------------------------------------------------------------


def test_stuck_finalizing_holds_the_batch_for_n_more_seconds(make_api: MakeApi) -> None:
    # 10 rows at 10/s: validating 5 s, in_progress 1 s, finalizing 5 s (+ 300 s stuck)
    api = make_api(rows_per_second=10)
    api.emulator.faults.add_batch_fault(stuck_finalizing=300)
    created = api.submit(api.chat_file(10))

    api.clock.advance(11 + 299)
    stuck = api.get(created["id"])
    api.clock.advance(1)
    done = api.get(created["id"])

    assert stuck["status"] == "finalizing"
    assert stuck["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    assert stuck["finalizing_at"] == created["created_at"] + 6
    assert done["status"] == "completed"
    assert done["completed_at"] == created["created_at"] + 311


def test_stuck_forever_until_released(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(stuck_finalizing=math.inf)
    created = api.submit(api.chat_file(3))
    other = api.submit(api.chat_file(3))  # times=1: only the first batch is marked

    api.clock.advance(30 * 86400)  # past expires_at too: a finalizing batch does not expire
    stuck = api.get(created["id"])
    released = api.emulator.release_stuck()
    done = api.get(created["id"])

    assert stuck["status"] == "finalizing"
    assert api.get(other["id"])["status"] == "completed"
    assert released == [created["id"]]
    assert done["status"] == "completed"
    assert done["completed_at"] == created["created_at"] + 30 * 86400
    assert api.emulator.release_stuck() == []


def test_release_before_finalizing_completes_on_schedule(make_api: MakeApi) -> None:
    api = make_api(rows_per_second=1)
    api.emulator.faults.add_batch_fault(stuck_finalizing=math.inf)
    created = api.submit(api.chat_file(10))

    api.clock.advance(6)
    assert api.emulator.release_stuck(created["id"]) == [created["id"]]
    done = api.finish(created["id"], step=1)

    # 5 s validating + 10 s running + 5 s finalizing, as if never stuck
    assert done["completed_at"] == created["created_at"] + 20
    with pytest.raises(ValueError, match="no batch"):
        api.emulator.release_stuck("fr_batch-unknown")


def test_stuck_batch_can_still_be_cancelled(make_api: MakeApi) -> None:
    api = make_api(mode="openai")
    api.emulator.faults.add_batch_fault(stuck_finalizing=math.inf)
    created = api.submit(api.chat_file(4))
    api.clock.advance(600)

    api.http.post(f"/batches/{created['id']}/cancel")
    api.clock.advance(600)
    done = api.get(created["id"])

    assert done["status"] == "cancelled"
    assert done["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert len(files_of(api, done)[0]) == 4


# -- error_file_id "" (X12) and output_file_id null (X8) ---------------------------------------


def test_empty_error_file_id_on_a_clean_batch(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(empty_error_file_id=True, times=2)
    clean = api.submit(api.chat_file(3))
    with_failure = api.submit(api.jsonl([api.chat_line("a"), api.chat_line("b", model=None)]))

    running = api.get(clean["id"])
    done = api.finish(clean["id"])
    failed_lines = api.finish(with_failure["id"])

    assert clean["error_file_id"] == running["error_file_id"] == ""
    assert (done["status"], done["error_file_id"]) == ("completed", "")
    assert done["output_file_id"]
    assert failed_lines["error_file_id"] not in (None, "")


def test_output_file_id_is_null_when_a_fault_fails_every_line(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(line_500=1.0)

    done = api.finish(api.submit(api.chat_file(5))["id"])

    assert done["status"] == "completed"
    assert done["output_file_id"] is None
    assert done["request_counts"] == {"total": 5, "completed": 0, "failed": 5}
    _, errors = files_of(api, done)
    assert {line["response"]["status_code"] for line in errors} == {500}


# -- per-line 429/500 --------------------------------------------------------------------------


def test_per_line_429_and_500_land_in_the_error_file(make_api: MakeApi) -> None:
    api = make_api(seed=5)
    api.emulator.faults.add_batch_fault(line_429=0.2, line_500=0.1)

    done = api.finish(api.submit(api.chat_file(300))["id"])

    output, errors = files_of(api, done)
    statuses = Counter(line["response"]["status_code"] for line in errors)
    assert set(statuses) == {429, 500}
    assert 30 <= statuses[429] <= 90
    assert 10 <= statuses[500] <= 60
    assert done["request_counts"] == {
        "total": 300,
        "completed": len(output),
        "failed": len(errors),
    }
    assert sorted(ids(output) + ids(errors)) == sorted(f"r{i}" for i in range(300))
    limited = next(line for line in errors if line["response"]["status_code"] == 429)
    assert limited["error"] is None
    assert limited["response"]["body"]["error"]["code"] == "rate_limit_exceeded"
    crashed = next(line for line in errors if line["response"]["status_code"] == 500)
    assert crashed["response"]["body"]["error"]["type"] == "server_error"


def test_request_counts_include_per_line_failures_while_in_progress(make_api: MakeApi) -> None:
    api = make_api(rows_per_second=1, validation_seconds=0)
    api.emulator.faults.add_batch_fault(line_429=1.0)
    batch_id = api.submit(api.chat_file(10))["id"]

    api.clock.advance(4)

    assert api.get(batch_id)["request_counts"] == {"total": 10, "completed": 0, "failed": 4}


def test_a_resubmitted_request_succeeds_when_only_the_first_batch_is_marked(
    make_api: MakeApi,
) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(line_429=1.0, times=1)
    content = api.chat_file(4)

    first = api.finish(api.submit(content)["id"])
    again = api.finish(api.submit(content)["id"])

    assert first["request_counts"]["failed"] == 4
    assert again["request_counts"] == {"total": 4, "completed": 4, "failed": 0}


def test_with_a_standing_rate_resubmissions_get_a_fresh_draw(make_api: MakeApi) -> None:
    api = make_api(seed=11)
    api.emulator.faults.add_batch_fault(line_429=0.5, times=None)
    pending = {f"r{i}" for i in range(64)}

    rounds = 0
    while pending and rounds < 20:
        lines = [api.chat_line(custom_id) for custom_id in sorted(pending)]
        done = api.finish(api.submit(api.jsonl(lines))["id"])
        pending = set(ids(files_of(api, done)[1]))
        rounds += 1

    assert not pending
    assert rounds > 1


def test_config_failures_keep_their_400_under_a_line_fault(make_api: MakeApi) -> None:
    api = make_api(fail_custom_ids={"r1"})
    api.emulator.faults.add_batch_fault(line_500=1.0)

    done = api.finish(api.submit(api.chat_file(3))["id"])

    _, errors = files_of(api, done)
    by_id = {line["custom_id"]: line["response"]["status_code"] for line in errors}
    assert by_id == {"r0": 500, "r1": 400, "r2": 500}


# -- missing, duplicated, shuffled lines; no usage ---------------------------------------------


def test_missing_lines_are_in_neither_file(make_api: MakeApi) -> None:
    api = make_api(seed=3, fail_custom_ids={f"r{i}" for i in range(0, 200, 10)})
    api.emulator.faults.add_batch_fault(missing_lines=0.1)

    done = api.finish(api.submit(api.chat_file(200))["id"])

    output, errors = files_of(api, done)
    present = ids(output) + ids(errors)
    missing = {f"r{i}" for i in range(200)} - set(present)
    assert len(present) == len(set(present))
    assert 8 <= len(missing) <= 35
    # the counts still add up to everything, as the provider reports what it ran
    counts = done["request_counts"]
    assert counts["completed"] + counts["failed"] == 200
    assert counts["completed"] + counts["failed"] > len(present)


def test_duplicated_lines_appear_twice(make_api: MakeApi) -> None:
    api = make_api(seed=4)
    api.emulator.faults.add_batch_fault(duplicate_lines=0.2)

    done = api.finish(api.submit(api.chat_file(100))["id"])

    output, _ = files_of(api, done)
    seen = Counter(ids(output))
    twice = [custom_id for custom_id, n in seen.items() if n == 2]
    assert set(seen) == {f"r{i}" for i in range(100)}
    assert set(seen.values()) == {1, 2}
    assert 8 <= len(twice) <= 35
    assert done["request_counts"]["completed"] == 100
    first = next(line for line in output if line["custom_id"] == twice[0])
    assert output.count(first) == 2  # byte-for-byte the same line


def test_shuffle_marks_one_batch_not_the_run(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(shuffle=True)
    content = api.chat_file(40)

    shuffled = files_of(api, api.finish(api.submit(content)["id"]))[0]
    ordered = files_of(api, api.finish(api.submit(content)["id"]))[0]

    expected = [f"r{i}" for i in range(40)]
    assert ids(ordered) == expected
    assert ids(shuffled) != expected
    assert sorted(ids(shuffled)) == sorted(expected)


def test_no_usage_drops_the_key(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(no_usage=True)

    created = api.submit(api.chat_file(2))
    done = api.finish(created["id"])

    assert "usage" not in created
    assert "usage" not in done
    assert done["status"] == "completed"


# -- how batch rules combine -------------------------------------------------------------------


def test_batch_rules_do_not_shadow_response_faults(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(no_usage=True, times=None)
    api.emulator.faults.add("create_batch", status=429, retry_after=1)
    file_id = api.upload_id(api.chat_file(1))

    limited = api.create(file_id)
    created = api.create(file_id)

    assert limited.status_code == 429
    assert created.status_code == 200
    assert "usage" not in created.json()


def test_a_refused_create_does_not_spend_a_batch_rule(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(no_usage=True, times=1)

    assert api.create("file-missing").status_code == 404
    marked = api.submit(api.chat_file(1))

    assert "usage" not in marked
    (entry,) = api.emulator.ledger.batches
    assert entry.faults == {"kind": "batch", "no_usage": True}


def test_rules_firing_on_one_batch_merge(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(no_usage=True)
    api.emulator.faults.add_batch_fault(BatchFault(empty_error_file_id=True, line_429=0.5))
    api.emulator.faults.add_batch_fault(line_429=1.0, stuck_finalizing=10)

    api.submit(api.chat_file(1))

    (entry,) = api.emulator.ledger.batches
    assert entry.faults == {
        "kind": "batch",
        "stuck_finalizing": 10,
        "empty_error_file_id": True,
        "line_429": 1.0,
        "no_usage": True,
    }


def test_probabilistic_batch_rule_marks_a_reproducible_subset(make_api: MakeApi) -> None:
    patterns = []
    for _ in range(2):
        api = make_api(seed=21)
        api.emulator.faults.add_batch_fault(no_usage=True, times=None, probability=0.5)
        file_id = api.upload_id(api.chat_file(1))
        patterns.append(["usage" in api.create(file_id).json() for _ in range(30)])

    assert patterns[0] == patterns[1]
    assert 5 <= patterns[0].count(False) <= 25


@pytest.mark.parametrize(
    "options",
    [{}, {"line_429": 1.5}, {"missing_lines": -0.1}, {"stuck_finalizing": -1}],
)
def test_bad_batch_faults_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        BatchFault(**options)


def test_fail_with_fails_the_whole_batch_with_that_code() -> None:
    from orchestrator.clock import ManualClock
    from orchestrator.emulator import Emulator, EmulatorConfig, EmuRequest

    clock = ManualClock()
    with Emulator(EmulatorConfig(), clock) as emulator:
        emulator.faults.add_batch_fault(fail_with="server_error")
        line = (
            b'{"custom_id": "a", "provider": "openai", "method": "POST", "url": '
            b'"/v1/chat/completions", "body": {"model": "m", "messages": []}}\n'
        )
        boundary = "b0undary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"'
                f"\r\nContent-Type: application/jsonl\r\n\r\n"
            ).encode()
            + line
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = [
            ("authorization", "Bearer k"),
            ("content-type", f"multipart/form-data; boundary={boundary}"),
        ]
        uploaded = emulator.handle(
            EmuRequest.build("POST", "/v1/files", headers=headers, body=body)
        ).json()
        created = emulator.handle(
            EmuRequest.build(
                "POST",
                "/v1/batches",
                headers=[*headers[:1], ("content-type", "application/json")],
                body=b'{"input_file_id": "%s", "endpoint": "/v1/chat/completions", '
                b'"completion_window": "24h"}' % uploaded["id"].encode(),
            )
        ).json()
        clock.advance(60)
        batch = emulator.handle(
            EmuRequest.build("GET", f"/v1/batches/{created['id']}", headers=headers[:1])
        ).json()
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["code"] == "server_error"


def test_echo_auth_quotes_the_key_in_failed_lines_and_in_a_failed_batchs_errors(
    make_api: MakeApi,
) -> None:
    from orchestrator.emulator.fault_specs import parse_fault_spec

    api = make_api(token="sk-test-echoed", fail_custom_ids={"r0"})
    api.emulator.faults.add_json(parse_fault_spec("batch:echo_auth,line_500=0.5,times=1"))
    lines = api.submit(api.chat_file(20))
    plain = api.submit(api.chat_file(20))  # times=1: only the first batch echoes
    api.emulator.faults.add_batch_fault(fail_with="invalid_request", echo_auth=True)
    failed = api.submit(api.chat_file(3))

    output, errors = files_of(api, api.finish(lines["id"]))
    _, plain_errors = files_of(api, api.finish(plain["id"]))
    failed = api.finish(failed["id"])

    quoted = " (received Authorization: Bearer sk-test-echoed)"
    statuses = Counter(e["response"]["status_code"] for e in errors)
    assert statuses[400] == 1 and statuses[500] > 0 and len(output) + len(errors) == 20
    for error in errors:  # the config's 400 and the fault's 500s alike
        assert error["response"]["body"]["error"]["message"].endswith(quoted), error
    assert "sk-test-echoed" not in str(output)
    assert [e["response"]["body"]["error"]["message"] for e in plain_errors] == [
        "Emulated failure: custom_id 'r0' is in fail_custom_ids."
    ]
    assert failed["status"] == "failed"
    assert failed["errors"]["data"] == [
        {
            "code": "invalid_request",
            "message": "The batch failed: invalid_request (injected fault)." + quoted,
            "param": None,
            "line": None,
        }
    ]
