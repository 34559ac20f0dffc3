"""The logging pipeline keeps the API key out of every line it writes, whatever put it there.

``configure_logging`` as the CLI calls it, writing to a StringIO, in both formats. "Out" means no
8-character window of the key's distinctive part (after ``sk-test-``) anywhere in the output: a key
cut short by a renderer (frame locals used to be cut to 80 characters before the redactor ran) is
as much a leak as the whole key.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from orchestrator.observability import REDACTED, Scrubber, configure_logging
from tests.support import API_KEY

DISTINCT = API_KEY.removeprefix("sk-test-")
WINDOWS = [DISTINCT[i : i + 8] for i in range(len(DISTINCT) - 7)]
FORMATS = ["json", "console"]

Configure = Callable[[str], io.StringIO]


def leaks(text: str) -> list[str]:
    return [w for w in WINDOWS if w in text]


@pytest.fixture
def configure() -> Iterator[Configure]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def configure(fmt: str) -> io.StringIO:
        out = io.StringIO()
        configure_logging(level="debug", fmt=fmt, secrets=[API_KEY], stream=out)
        return out

    yield configure
    root.handlers[:], level = saved
    root.setLevel(level)
    structlog.reset_defaults()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def answer_with_the_key_in_hand() -> None:
    key = API_KEY
    # 60 characters, then the key: cut at 80 characters, as a locals renderer cuts, mid-key
    quoted = "x" * 60 + key + "y" * 60
    raise ValueError(f"the provider said: {quoted}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_traceback_with_the_key_in_locals_and_message_shows_no_part_of_it(
    configure: Configure, fmt: str
) -> None:
    out = configure(fmt)
    try:
        answer_with_the_key_in_hand()
    except ValueError:
        structlog.get_logger("orchestrator.runner").exception("step_crashed", step="poll")
    text = out.getvalue()
    # the traceback is there, and so was the key: its message shows the marker
    assert "step_crashed" in text and "answer_with_the_key_in_hand" in text
    assert REDACTED in text
    assert leaks(text) == [], text
    if fmt == "json":
        (line,) = json_lines(text)
        frames = [frame for exc in line["exception"] for frame in exc["frames"]]
        assert frames and not any("locals" in frame for frame in frames)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "name",
    ["httpx", "httpcore.http11", "uvicorn.error", "apscheduler.scheduler", "sqlalchemy.pool"],
)
def test_a_library_record_carrying_the_key_is_redacted(
    configure: Configure, fmt: str, name: str
) -> None:
    out = configure(fmt)
    library = logging.getLogger(name)
    library.error("sending %s", f"Authorization: Bearer {API_KEY}")
    try:
        answer_with_the_key_in_hand()
    except ValueError:
        library.error("job raised", exc_info=True)
    text = out.getvalue()
    assert text.count(name) >= 2 and "sending Authorization: Bearer " + REDACTED in text
    assert "answer_with_the_key_in_hand" in text
    assert leaks(text) == [], text
    if fmt == "json":
        assert len(json_lines(text)) == 2


class Answer:
    """Not a string: the renderer calls ``repr`` on it, after the structured redaction."""

    def __repr__(self) -> str:
        return f"Answer(headers={{'authorization': 'Bearer {API_KEY}'}})"


@pytest.mark.parametrize("fmt", FORMATS)
def test_what_a_renderer_makes_of_a_value_and_a_cut_key_are_redacted(
    configure: Configure, fmt: str
) -> None:
    out = configure(fmt)
    log = structlog.get_logger("t")
    log.info("answer_received", answer=Answer(), error=ValueError(f"bad key {API_KEY}"))
    log.info("quoted", text=f"Bearer {API_KEY[:17]}...")  # a proxy quoted 17 of 28 characters
    log.info("plain", header=f"Bearer {API_KEY}", nested={"k": [API_KEY, (API_KEY,)]})
    text = out.getvalue()
    assert text.count(REDACTED) >= 5
    assert leaks(text) == [], text
    if fmt == "json":
        events = [line["event"] for line in json_lines(text)]
        assert events == ["answer_received", "quoted", "plain"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Bearer {API_KEY}.", f"Bearer {REDACTED}."),
        (f"cut: {API_KEY[:17]}", f"cut: {REDACTED}"),
        (f"tail: {API_KEY[-8:]}!", f"tail: {REDACTED}!"),
        (f"7 mean nothing: {API_KEY[-7:]}", f"7 mean nothing: {API_KEY[-7:]}"),
        (f"{API_KEY}{API_KEY} {API_KEY}", f"{REDACTED} {REDACTED}"),
        ("nothing to see", "nothing to see"),
    ],
)
def test_the_scrubber_catches_the_key_whole_or_in_part(text: str, expected: str) -> None:
    assert Scrubber([API_KEY])(text) == expected


def test_the_scrubber_keeps_json_valid_around_escapes() -> None:
    # A piece of the secret right after an escape sequence: the escape goes with it.
    scrub = Scrubber(["nabcdefgh0123"])
    for value in ["x\nabcdefgh0123 y", "x\\nabcdefgh0123", 'q"abcdefgh01 z']:
        line = json.dumps({"v": value})
        cleaned = scrub(line)
        assert "abcdefgh" not in cleaned
        assert REDACTED in json.loads(cleaned)["v"]


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (f"Bearer {API_KEY}", True),
        (f"cut short: {API_KEY[:-4]}", True),
        (f"the tail: {API_KEY[-8:]}", True),
        (f"7 mean nothing: {API_KEY[-7:]}", False),
        ("nothing to see", False),
        # a piece written with escapes is not searched for, so the line counts as suspect
        ("".join(f"\\u{ord(c):04x}" for c in API_KEY), True),
        ("an escaped slash \\/ and nothing else", True),
    ],
)
def test_a_json_line_is_searched_for_the_key_without_parsing_it(value: str, found: bool) -> None:
    raw = b'{"error": {"message": "' + value.encode() + b'"}}'
    assert Scrubber([API_KEY]).found_in_json(raw) is found
    assert Scrubber([]).found_in_json(raw) is False


def test_a_secret_json_must_escape_is_found_as_json_spells_it() -> None:
    secret = 'ab"cd\\ef"gh\\ij'  # every 8 characters hold a quote or a backslash: whole only
    raw = json.dumps({"message": f"the password is {secret}"}, ensure_ascii=False).encode()
    assert b'ab\\"cd\\\\ef' in raw
    assert Scrubber([secret]).found_in_json(raw)
    assert not Scrubber([secret]).found_in_json(raw.replace(b"ab", b"xy"))
    assert Scrubber([secret]).found_in(f"the password is {secret}")


@pytest.mark.parametrize("secret", [API_KEY, "pw:9f8e/7d6c@", "short", 'ab"cd\\ef"gh\\ij'])
def test_every_piece_of_a_secret_is_found_and_nothing_shorter(secret: str) -> None:
    scrub = Scrubber([secret])
    n = min(8, len(secret))
    for size in range(1, len(secret) + 1):
        for at in range(len(secret) - size + 1):
            piece = secret[at : at + size]
            text = f"<<{piece}>>"
            raw = json.dumps({"message": text}, ensure_ascii=False).encode()
            whole = piece == secret
            clean = not any(c in piece for c in '"\\')
            assert scrub.found_in(text) is (whole or (size >= n and clean)), piece
            assert scrub.found_in_json(raw) is (whole or (size >= n and clean)), piece
