"""File records and their contents on disk.

Contents never live in memory: uploads stream into a blob under the storage directory and
downloads stream out of it in chunks, so a 200 MB file costs a file descriptor, not 200 MB.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator.emulator.jsonl import FileIndex

CHUNK_BYTES = 1024 * 1024  # few large chunks: each one is a threadpool hop in Starlette


@dataclasses.dataclass
class StoredFile:
    """One file the API knows: an upload or a batch's output/error file."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None
    path: Path
    # Present for uploads with purpose "batch": what the lifecycle needs from the content.
    index: FileIndex | None = None
    # A "not ready" fault hides the file from the API until then (Unix seconds).
    visible_at: float | None = None

    def visible(self, now: float) -> bool:
        return self.visible_at is None or now >= self.visible_at

    @property
    def num_rows(self) -> int:
        return self.index.num_rows if self.index is not None else 0


class BlobDir:
    """The directory holding every file's content, one blob per file."""

    def __init__(self, storage_dir: Path | None) -> None:
        if storage_dir is None:
            self.root = Path(tempfile.mkdtemp(prefix="batch-emulator-"))
        else:
            storage_dir.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix="emulator-", dir=storage_dir))
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def new_path(self, suffix: str = ".jsonl") -> Path:
        with self._lock:
            number = next(self._numbers)
        return self.root / f"blob-{number:08d}{suffix}"

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def close(self) -> None:
        # With a caller-given storage_dir only our private subdirectory goes, never the dir itself.
        shutil.rmtree(self.root, ignore_errors=True)


class FileChunks(Iterator[bytes]):
    """A file's content as chunks; opened at construction so a missing file fails right away."""

    def __init__(self, path: Path, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._handle: BinaryIO = path.open("rb")
        self._chunk_bytes = chunk_bytes

    def __iter__(self) -> FileChunks:
        return self

    def __next__(self) -> bytes:
        if self._handle.closed:
            raise StopIteration
        chunk = self._handle.read(self._chunk_bytes)
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._handle.close()

    def __del__(self) -> None:
        # A body nobody read (client gone, fault) must not leak its descriptor; if open() failed
        # in __init__ there is no handle to close.
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()


def file_object_openai(record: StoredFile) -> dict[str, Any]:
    """OpenAI's FileObject."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "expires_at": record.expires_at,
        "status_details": None,
    }


def file_object_fastrouter(record: StoredFile) -> dict[str, Any]:
    """FastRouter's upload response: OpenAI's core fields plus file_id, num_rows and url."""
    return {
        "file_id": record.id,
        "id": record.id,
        "object": "file",
        "filename": record.filename,
        "purpose": record.purpose,
        "bytes": record.bytes,
        "num_rows": record.num_rows,
        # A storage URL that resolves nowhere (.invalid is reserved), like a private bucket's.
        "url": f"https://storage.emulator.invalid/files/{record.id}",
        "created_at": record.created_at,
    }
