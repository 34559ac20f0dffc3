"""Modes whose wire format is not OpenAI's: each is an adapter over the emulator's core.

The core (:class:`~orchestrator.emulator.core.Emulator` with its state, lazy lifecycle, fault
injection and ledger) knows batches made from a JSONL input of ``{"custom_id", "url", "body"}``
lines, a lifecycle ``validating → in_progress → finalizing → completed`` (or expired, cancelled,
failed) and output/error files. A mode here brings only what differs on the wire, as a
:class:`Wire`: its route table (mapped onto the core's route names, so that every fault rule and
the ledger mean the same in every mode), its authentication, its handlers, which translate calls
into the core's operations and the core's records into the provider's shapes, and a last touch on
each answer (headers, request ids in error bodies).

Why an adapter and not a copy of the core: the lifecycle, the per-line faults, the expiry and the
cancellation are the hard part to get right and to keep deterministic; one implementation of them
serves every provider, and a fault written for one mode (a lost create answer, a download cut
short) is exercised by all of them.

A new mode: a module here with a ``Wire`` class (and, if its limits differ from the config's
defaults, a ``mode_config``), one branch in each function below, its name in
:data:`orchestrator.emulator.config.MODES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.emulator.modes import anthropic

if TYPE_CHECKING:
    from orchestrator.emulator.config import EmulatorConfig
    from orchestrator.emulator.faults import FaultInjector
    from orchestrator.emulator.messages import EmuRequest, EmuResponse
    from orchestrator.emulator.routes import Match
    from orchestrator.emulator.state import State

Handler = Callable[["EmuRequest", "str | None"], "EmuResponse"]


class Wire(Protocol):
    """What a mode adds to the core: see the module docstring."""

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """Route name -> handler (the core's signature: request and the id in the path)."""
        ...

    def match(self, method: str, path: str) -> Match:
        """The route name of a call (``routes.UNKNOWN`` when none fits)."""
        ...

    def authenticate(self, request: EmuRequest) -> None:
        """Raise ApiProblem when the call's credentials (or required headers) are refused."""
        ...

    def finish(self, response: EmuResponse, request_id: str) -> None:
        """Last touch on every answer, faulted or not, once its request id is known."""
        ...

    def produced(self, batch_id: str) -> list[Any]:
        """Every result line of the batch as the wire serves it, parsed (empty until ended)."""
        ...


def mode_config(config: EmulatorConfig) -> EmulatorConfig:
    """The config with the mode's own limits where the caller left the defaults."""
    if config.mode == "anthropic":
        return anthropic.mode_config(config)
    return config


def wire_for(config: EmulatorConfig, *, state: State, faults: FaultInjector) -> Wire | None:
    """The mode's wire, or None for the core's own OpenAI-style one."""
    if config.mode == "anthropic":
        return anthropic.AnthropicWire(config, state=state, faults=faults)
    return None
