"""A local, deterministic FastRouter/OpenAI-compatible Batch API for tests, benchmarks and demos.

A framework-free core (:class:`Emulator`: state, lazy lifecycle on an injected clock, fault
injection, a ledger of what happened) with two adapters: :func:`mock_transport` for in-process
httpx clients and :class:`EmulatorServer` / :func:`create_app` for real HTTP. Modes whose wire is
not OpenAI's (``anthropic``: the Message Batches API; ``gemini``: the Gemini API's batch mode) are
adapters over the same core, in :mod:`orchestrator.emulator.modes`, with fault kinds of their own
(:class:`MessageBatchFault`, :class:`NoContentType`, :class:`GeminiBatchFault`).

Quick start::

    clock = ManualClock()
    with Emulator(EmulatorConfig(mode="openai"), clock) as emulator, EmulatorServer(emulator) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="k")
        emulator.faults.add("create_batch", status=429, retry_after=30)     # the next create
        emulator.faults.add("file_content", truncate=0.5)                   # a download cut off
        emulator.faults.add_file_not_ready(5)                               # the next upload
        emulator.faults.add_batch_fault(line_429=0.1, shuffle=True)         # the next batch
        ...
        clock.advance(60)
"""

from __future__ import annotations

from orchestrator.emulator.config import EmulatorConfig, Mode
from orchestrator.emulator.core import Emulator
from orchestrator.emulator.fault_specs import parse_fault_spec
from orchestrator.emulator.faults import (
    Delay,
    Fault,
    FaultContext,
    FaultInjector,
    FaultRule,
    HttpError,
    TruncatedBody,
    register_fault_kind,
)
from orchestrator.emulator.ledger import BatchEntry, CallEntry, FileEntry, Ledger
from orchestrator.emulator.marks import BatchFault, FileNotReady
from orchestrator.emulator.messages import EmuRequest, EmuResponse, Headers
from orchestrator.emulator.mock import mock_transport
from orchestrator.emulator.modes.anthropic_faults import MessageBatchFault, NoContentType
from orchestrator.emulator.modes.gemini_faults import GeminiBatchFault
from orchestrator.emulator.server import EmulatorServer, add_arguments, create_app, run_from_args

__all__ = [
    "BatchEntry",
    "BatchFault",
    "CallEntry",
    "Delay",
    "EmuRequest",
    "EmuResponse",
    "Emulator",
    "EmulatorConfig",
    "EmulatorServer",
    "Fault",
    "FaultContext",
    "FaultInjector",
    "FaultRule",
    "FileEntry",
    "FileNotReady",
    "GeminiBatchFault",
    "Headers",
    "HttpError",
    "Ledger",
    "MessageBatchFault",
    "Mode",
    "NoContentType",
    "TruncatedBody",
    "add_arguments",
    "create_app",
    "mock_transport",
    "parse_fault_spec",
    "register_fault_kind",
    "run_from_args",
]
