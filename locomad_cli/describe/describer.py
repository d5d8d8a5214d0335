"""What the recurrent loop asks of a describer, and the two kinds there are.

`describe()` goes through a film's slots in film order and, for each, hands a describer an
`Ask`: the slot, its dialogue, the context chosen from the film so far, the cast names the
film has said, and the slot's speaking budget in words. A describer answers with candidates;
`choose` (one function, so further rules plug in there) keeps one of them or leaves the slot
empty and says why. Two describers: the card's trained LoCo-MAD model (its DSM picks the
context from the proposal it is given) and a vision-language model (describe/vlm.py), which
needs no training. Which one is the card's `describer.kind`: no registry.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from locomad_cli.card import ModelCard
    from locomad_cli.describe.film import Film, TextFeatureCache
    from locomad_cli.slots.plan import Slot


@dataclass
class Ask:
    """One slot's question to a describer."""

    slot: Slot
    dialogue: str
    """What is said during the slot (the rule describe and training share)."""
    context: list[Any]
    """The context: LoCo-MAD's proposal (ContextItems, its DSM chooses), or a vlm's chosen
    items (context.ContextLine)."""
    names: list[str] = field(default_factory=list)
    """Cast names the film has said so far (the slot's dialogue or a context item)."""
    unheard: list[str] = field(default_factory=list)
    """Cast names not said yet: a description may not use them."""
    budget: int = 1
    """Words the slot has room for at the card's describer.words_per_minute."""
    avoid: list[str] = field(default_factory=list)
    """Descriptions this one may not repeat word for word (the last llm.avoid_repeats)."""


@dataclass
class Answer:
    """A describer's answer: candidates best first, the context it used, and notes for the
    JSON (why a slot is empty, how often it was asked, whether it is over budget)."""

    candidates: list[tuple[str, float | None]]
    selected: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    """Set by the describer when it has chosen (LoCo-MAD); otherwise `choose` decides."""


class Describer(Protocol):
    """A describer of slots. `context` picks what goes into an Ask from the film's earlier
    descriptions (rows of the track, oldest first); `ask` answers asks in order (several at
    once only where the setting allows: the recurrent setting sends one)."""

    batch: int
    """Asks per call where slots do not depend on each other."""

    def context(self, film: Film, earlier: list[dict[str, Any]], slot: Slot) -> list[Any]: ...

    def ask(self, film: Film, asks: list[Ask]) -> list[Answer]: ...


PROMPT_VERSION = "ad-1"
"""Version of the vlm's prompt (describe/vlm.py), recorded in every track it writes."""


def about(card: ModelCard) -> dict[str, Any]:
    """Who writes the descriptions, for the JSON track and the progress file's identity."""
    if card.describer.kind == "locomad":
        return {"describer": "locomad", "model": card.llm.name}
    if card.vlm.backend == "endpoint":
        model = card.endpoint.model
        return {
            "describer": "vlm",
            "backend": "endpoint",
            "model": model,
            "url": card.endpoint.url,
            "prompt_version": PROMPT_VERSION,
        }
    return {
        "describer": "vlm",
        "backend": "local",
        "model": card.vlm.name,
        "prompt_version": PROMPT_VERSION,
    }


def budget_words(slot: Slot, words_per_minute: float) -> int:
    """The words a slot has room for: its length at the speaking rate, at least one."""
    return max(1, math.floor((slot.end - slot.start) * words_per_minute / 60.0 + 1e-9))


def word_count(text: str) -> int:
    return len(re.findall(r"[\w'’-]+", text))


def text_key(text: str) -> str:
    """A description as descriptions are compared: case, spacing and final stop aside."""
    return " ".join(text.lower().rstrip(".!").split())


def uses_name(text: str, names: list[str]) -> str | None:
    """The first of `names` that `text` holds as a whole word, any case."""
    return next((n for n in names if re.search(rf"\b{re.escape(n)}\b", text, re.I)), None)


def choose(answer: Answer, ask: Ask, budget: bool = True) -> tuple[str, dict[str, Any]]:
    """The description kept for a slot, and notes for its JSON row: the first candidate that
    repeats none of `ask.avoid`, names nobody unheard and (with `budget`) fits the budget;
    failing the budget, the shortest such one, marked `over_budget`. None acceptable: the
    slot stays empty and `empty` says why. Every describer's answer passes through here."""
    notes = dict(answer.notes)
    if answer.text is not None:  # the describer chose under the same rules (LoCo-MAD)
        return answer.text.strip(), notes
    if not answer.candidates:
        notes.setdefault("empty", "no answer")
        return "", notes
    banned = {text_key(t) for t in ask.avoid}
    fresh = [t for t, _ in answer.candidates if text_key(t) not in banned]
    if not fresh:
        notes["empty"] = f"repeats one of the last {len(ask.avoid)} descriptions"
        return "", notes
    allowed = [t for t in fresh if uses_name(t, ask.unheard) is None]
    if not allowed:
        notes["empty"] = f"names {uses_name(fresh[0], ask.unheard)} before the film has said it"
        return "", notes
    if not budget:
        return allowed[0], notes
    fits = [t for t in allowed if word_count(t) <= ask.budget]
    if fits:
        return fits[0], notes
    shortest = min(allowed, key=word_count)
    notes["over_budget"] = {"words": word_count(shortest), "budget": ask.budget}
    return shortest, notes


class LocoMadDescriber:
    """The card's trained LoCo-MAD model: the proposal is the previous dsm.proposal_len
    descriptions with their dialogue, its DSM picks top-k of them, the LLM writes. The model
    applies the names and no-repeat rules inside its decoding (beam candidates), so its own
    choice is kept."""

    def __init__(self, model: Any, cache: TextFeatureCache, setting: str, batch: int):
        self.model, self.cache, self.setting, self.batch = model, cache, setting, batch

    def context(self, film: Film, earlier: list[dict[str, Any]], slot: Slot) -> list[Any]:
        from locomad_cli.data.records import ContextItem

        p = self.model.card.dsm.proposal_len
        rows = earlier[-p:] if p > 0 else []
        return [ContextItem(r["text"], r.get("subtitles", ""), r["start"], r["end"]) for r in rows]

    def ask(self, film: Film, asks: list[Ask]) -> list[Answer]:
        from locomad_cli.data.records import collate

        card = self.model.card
        records = [film.record(a.slot, a.context, self.cache) for a in asks]
        batch = collate(records, card.pme.max_frames, card.dsm.proposal_len)
        setting = "local" if self.setting == "local" else "context"
        repeats = self.setting == "recurrent" and card.llm.avoid_repeats > 0
        avoid = [a.avoid for a in asks] if repeats else None
        # the length term ranks the n-best by each slot's room at the voice's rate
        budgets = [(a.slot.end - a.slot.start) * card.describer.words_per_minute / 60 for a in asks]
        gens = self.model.generate(
            batch, setting=setting, avoid=avoid, names=film.names, budgets=budgets
        )
        return [_answer(record, gen) for record, gen in zip(records, gens, strict=True)]


def _answer(record: Any, gen: Any) -> Answer:
    scores = list(gen.scores) + [None] * (len(gen.selected) - len(gen.scores))
    nbest = getattr(gen, "candidates", None) or [(gen.text, None)]
    selected = [
        {
            "text": record.context[j].text,
            "subtitle": record.context[j].subtitle,
            "start": record.context[j].start,
            "end": record.context[j].end,
            "score": None if s is None else float(s),
        }
        for j, s in zip(gen.selected, scores, strict=True)
    ]
    candidates = [(t.strip(), None if sc is None else round(float(sc), 5)) for t, sc in nbest]
    return Answer(candidates, selected, text=gen.text)
