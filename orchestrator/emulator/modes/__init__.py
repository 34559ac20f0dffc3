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

**Adding a mode = one module here implementing** :class:`Wire` **+ one line in** :data:`WIRES`
(and its name in :data:`orchestrator.emulator.config.Mode`, which the command line and the type
checker read, with its own defaults, if any, in ``config.MODE_DEFAULTS``). On import the module
registers what the core cannot know, each with the one hook there is for it:

- its error answers: :func:`orchestrator.emulator.errors.register_error_renderer`;
- the endpoint its request lines are filed under (the answer of a line that succeeds, and the
  checks a line must pass): :func:`orchestrator.emulator.lines.register_endpoint`;
- fault kinds of its own: :func:`orchestrator.emulator.faults.register_fault_kind` (a create's
  marks, each kind merged: ``marks.merged(faults.take_marks(route), Kind)``, as the core does).

The ``anthropic`` and ``gemini`` modes were written in parallel, each with its own hooks; of each
pair the one kept, and why:

- the Wire: the core dispatches (anthropic's ``handlers`` + ``authenticate``), rather than handing
  the call to the mode (gemini's ``serve``): the order of a call (key revoked, fault intercept,
  authentication, route check, handler, ledger) stays written once, in ``core.py``, and a mode's
  handlers have the core's signature. ``authenticate`` and ``finish`` are told the route (gemini's
  resumable upload step carries no key, and every answer to it needs ``x-goog-upload-status``);
- the registry: a table name → class (gemini's ``WIRES``), rather than a branch per mode in each
  of ``wire_for`` and ``mode_config`` (anthropic's); ``core.py`` reads it in one place;
- errors: a renderer of the whole response (gemini's), rather than of the body alone (anthropic's
  ``register_envelope``): Google answers a bad key 400 and a 429 without ``Retry-After``, which a
  body cannot say, while Anthropic's envelope is one ``json_response`` away;
- lines: ``register_endpoint(url, Endpoint(make_body, check))`` (anthropic's), rather than
  ``register_answer`` (gemini's): the same answer, plus the checks by which a provider fails a
  line it will not run (Anthropic's ``max_tokens``); gemini's endpoint has none;
- ids: :attr:`Wire.id_prefixes`, the mode's one id scheme, given to the State once (gemini's ids
  by mode, moved out of ``state.py``'s table into the mode), rather than a prefix passed to each
  ``create_batch`` (anthropic's), which did not reach the result files the core names;
- defaults: ``0`` in the config meaning "the mode's own" (gemini's window), rather than
  ``mode_config`` replacing values equal to the core's defaults (anthropic's limits): the config
  then says what the emulator does, and an explicit value always wins;
- the emulator's own absolute URLs: :attr:`EmuRequest.base_url` (anthropic's), rather than the
  ``Host`` header (gemini's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from orchestrator.emulator.modes.anthropic import AnthropicWire
from orchestrator.emulator.modes.gemini import GeminiWire

if TYPE_CHECKING:
    from orchestrator.emulator.config import EmulatorConfig
    from orchestrator.emulator.faults import FaultInjector
    from orchestrator.emulator.ids import IdPrefixes
    from orchestrator.emulator.messages import EmuRequest, EmuResponse, Handler
    from orchestrator.emulator.routes import Match
    from orchestrator.emulator.state import State


class Wire(Protocol):
    """What a mode adds to the core: see the module docstring."""

    # How the mode's batch ids and the ids of their result files start.
    id_prefixes: ClassVar[IdPrefixes]

    def __init__(self, config: EmulatorConfig, state: State, faults: FaultInjector) -> None: ...

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """Route name -> handler (the core's signature: the request and the id in the path)."""
        ...

    def match(self, method: str, path: str) -> Match:
        """The route name of a call and the id in its path (``routes.UNKNOWN`` when none fits)."""
        ...

    def authenticate(self, request: EmuRequest, route: str) -> None:
        """Raise ApiProblem when the call's credentials (or required headers) are refused."""
        ...

    def finish(
        self, request: EmuRequest, route: str, response: EmuResponse, request_id: str
    ) -> None:
        """Last touch on every answer, faulted or not, once its request id is known."""
        ...

    def produced(self, batch_id: str) -> list[Any]:
        """Every result line of the batch as the wire serves it, parsed (empty until ended)."""
        ...


# Mode name -> its wire; a mode of the core's own (fastrouter, openai) has none.
WIRES: dict[str, type[Wire]] = {
    "anthropic": AnthropicWire,
    "gemini": GeminiWire,
}
