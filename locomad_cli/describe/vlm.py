"""A vision-language model as describer: no training, inside the same recurrent loop.

For each slot the model is shown `describer.frames` frames decoded from the film, evenly
spaced over the slot, with the slot's dialogue, the context chosen from the film so far
(describe/context.py), the names the film has said and the slot's budget in words, and asked
for one sentence of audio description. The answer is cleaned ("The image shows…" openings,
quotes) and checked: over the budget it is asked again, shorter (describer.shorter_tries),
and a refusal, an empty answer or the model's own NOTHING_NEW leaves the slot empty with the
reason in the JSON. The model runs locally (describe/local_vlm.py) or behind any
OpenAI-compatible server (describe/endpoint.py): a `Backend`.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from locomad_cli.describe.context import film_so_far, select_clip, select_recent, slot_frames
from locomad_cli.describe.describer import Answer, Ask, text_key, uses_name, word_count
from locomad_cli.utils import LocomadError

if TYPE_CHECKING:
    from locomad_cli.card import ModelCard
    from locomad_cli.describe.film import Film, TextFeatureCache
    from locomad_cli.slots.plan import Slot

NOTHING_NEW = "NOTHING_NEW"

SYSTEM = (
    "You write audio description for blind and partially sighted people watching a film. "
    "Given frames from a moment of the film, in order, write ONE sentence saying what is "
    "visible that matters: who does what, where, and what changes. Present tense, third "
    "person, plain words. Describe only what can be seen; never say 'we see', 'the image "
    "shows', 'the frames', 'the camera' or 'the scene shows'; do not repeat the dialogue or "
    "what the context already described; do not interpret feelings or guess. Name a "
    "character only if the prompt lists the name as said; otherwise say who by their look. "
    f"If nothing new is visible, answer exactly {NOTHING_NEW}."
)


class Backend(Protocol):
    """Where the model runs: one chat turn with images, the answer's text."""

    concurrency: int

    def complete(self, images: list[np.ndarray], system: str, user: str) -> str: ...


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60:02d}:{m % 60:02d}:{s:02d}"


def prompt(ask: Ask, frames: int) -> str:
    """The user turn of one slot (PROMPT_VERSION)."""
    slot = ask.slot
    lines = [
        f"The {frames} frames are evenly spaced over {slot.end - slot.start:.1f} seconds of the "
        f"film, from {_clock(slot.start)}.",
        f'Dialogue during these seconds: "{ask.dialogue}"'
        if ask.dialogue
        else "No one speaks during these seconds.",
    ]
    if ask.context:
        lines.append("The film so far (oldest first):")
        for c in ask.context:
            said = "described" if c.kind == "description" else "said"
            lines.append(f"- [{_clock(c.start)}] {said}: {c.text}")
    if ask.names:
        lines.append(f"Names said so far: {', '.join(ask.names)}. Use no other name.")
    else:
        lines.append("No character's name has been said yet: use no name.")
    lines.append(f"Write one sentence of at most {ask.budget} words.")
    return "\n".join(lines)


def again(first: str, last: str, why: str, budget: int) -> str:
    """The user turn that asks again: the first one without its last line (the length it
    asked for), then what was wrong with the last answer."""
    head = first.rsplit("\n", 1)[0]
    if why.startswith("name:"):
        return (
            f'{head}\nYour answer "{last}" names {why[5:]}, whom the film has not named yet: '
            f"say who by their look instead, in at most {budget} words."
        )
    if why == "long":
        return (
            f'{head}\nYour answer "{last}" has {word_count(last)} words. Say the most '
            f"important part in at most {budget} words."
        )
    return (
        f'{head}\nYour answer "{last}" repeats an earlier description: say what is new, in '
        f"at most {budget} words."
    )


_OPENINGS = re.compile(
    r"^(?:(?:in|from)\s+(?:this|these|the)\s+(?:image|images|frames?|scene|clip|shot)s?,?\s*"
    r"|(?:the|this|these)\s+(?:image|images|frames?|scene|clip|shot|video)s?\s+"
    r"(?:shows?|depicts?|features?|captures?)\s+(?:that\s+)?"
    r"|we\s+(?:see|can see)\s+(?:that\s+)?|(?:audio\s+)?description:\s*|AD:\s*)",
    re.IGNORECASE,
)
_REFUSALS = re.compile(
    r"^(?:i'?m sorry|sorry,|i am sorry|i can(?:not|'t)|i am unable|i'?m unable|as an ai)",
    re.IGNORECASE,
)


def clean(raw: str) -> tuple[str, str | None]:
    """(description, None), or ("", why the slot stays empty): the answer's first line
    without markdown, quotes and "The image shows…" openings, capitalised."""
    text = " ".join((raw or "").replace("**", "").split())
    if not text:
        return "", "empty answer"
    if NOTHING_NEW.lower().replace("_", " ") in text.lower().replace("_", " "):
        return "", "nothing new to describe (the model's answer)"
    if _REFUSALS.match(text):
        return "", f"refused: {text[:80]}"
    text = text.strip(" -•\"'“”‘’`")
    while (cut := _OPENINGS.sub("", text, count=1)) != text:
        text = cut
    text = text.strip(" \"'“”‘’`")
    if not text:
        return "", "empty answer"
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return text, None


class SlotFrames:
    """A film's frames at slot times: `n` evenly spaced over each slot (the middle of each
    of n equal parts), decoded with features/video.py (its exact timestamps) on a grid of
    `fps`, short side `size`. The film is opened on first use."""

    def __init__(self, video: Path, n: int, size: int, fps: float = 10.0):
        self.video, self.n, self.size, self.fps = video, n, size, fps
        self.plan: Any = None

    def times(self, slot: Slot) -> list[float]:
        step = (slot.end - slot.start) / self.n
        return [slot.start + (j + 0.5) * step for j in range(self.n)]

    def images(self, slot: Slot) -> np.ndarray:
        """uint8 [n, H, W, 3]."""
        from locomad_cli.features.video import plan_frames, probe, read_frames

        if self.plan is None:
            self.plan = plan_frames(probe(self.video), self.fps, self.size)
        last = self.plan.frames - 1
        out = [min(last, max(0, math.floor(t * self.fps))) for t in self.times(slot)]
        return read_frames(self.plan.reader, self.plan, self.plan.indices[out])


class VLMDescriber:
    """The Describer of a vision-language model (see the module's docstring)."""

    def __init__(self, card: ModelCard, backend: Backend, frames: SlotFrames | None, cache):
        self.card, self.backend, self.frames, self.cache = card, backend, frames, cache
        self.batch = max(1, backend.concurrency)

    def context(self, film: Film, earlier: list[dict[str, Any]], slot: Slot) -> list[Any]:
        ctx = self.card.context
        items = film_so_far(earlier, film.subtitles, slot)
        if ctx.select == "recent":
            return select_recent(items, ctx.k, ctx.max_tokens)
        anchor = slot_frames(film.features, film.fps, slot.start, slot.end).mean(0)
        return select_clip(items, ctx.k, ctx.max_tokens, anchor, self.cache.get)

    def ask(self, film: Film, asks: list[Ask]) -> list[Answer]:
        images = [self.frames.images(a.slot) for a in asks]  # one decoder: in this thread
        if len(asks) == 1 or self.batch == 1:
            return [self.one(a, im) for a, im in zip(asks, images, strict=True)]
        with ThreadPoolExecutor(max_workers=self.batch) as pool:
            return list(pool.map(self.one, asks, images))

    def one(self, ask: Ask, images: np.ndarray) -> Answer:
        """Ask, and ask again while the answer is a repeat, names someone unheard or is
        over the budget (at most describer.shorter_tries more times); every usable answer is
        a candidate."""
        frames = list(images)
        candidates: list[tuple[str, float | None]] = []
        notes: dict[str, Any] = {"budget": ask.budget}
        banned = {text_key(t) for t in ask.avoid}
        first = user = prompt(ask, len(frames))
        for tries in range(1, self.card.describer.shorter_tries + 2):
            text, why = clean(self.backend.complete(frames, SYSTEM, user))
            notes["asked"] = tries
            if why is not None:
                if not candidates:
                    notes["empty"] = why
                break
            candidates.append((text, None))
            name = uses_name(text, ask.unheard)
            if text_key(text) in banned:
                user = again(first, text, "repeat", ask.budget)
            elif name is not None:
                user = again(first, text, f"name:{name}", ask.budget)
            elif word_count(text) > ask.budget:
                user = again(first, text, "long", ask.budget)
            else:
                break
        selected = [c.as_json() for c in ask.context]
        return Answer(candidates, selected, notes)


def check_vlm(card: ModelCard) -> None:
    """What a vlm card needs before any work: the server's address and model name, or the
    local weights (in the cache, or the hub reachable)."""
    if card.vlm.backend == "endpoint":
        from locomad_cli.describe.endpoint import check_endpoint

        check_endpoint(card)
        return
    from locomad_cli.describe.local_vlm import missing_weights

    message = missing_weights(card)
    if message:
        raise LocomadError(message)


def vlm_describer(
    card: ModelCard,
    film: Film,
    cache: TextFeatureCache | None,
    device: str,
    started: dict[str, Any],
    setting: str,
) -> VLMDescriber:
    """The card's vlm describer for one film; its backend is started once and kept in
    `started` for the next film."""
    key = f"{card.vlm.backend}:{card.endpoint.url}:{card.endpoint.model}:{card.vlm.name}"
    if key not in started:
        if card.vlm.backend == "endpoint":
            from locomad_cli.describe.endpoint import EndpointBackend

            started[key] = EndpointBackend(card)
        else:
            from locomad_cli.describe.local_vlm import LocalBackend

            started[key] = LocalBackend(card, device)
    backend = started[key]
    if hasattr(backend, "announce"):
        backend.announce(film.name)
    if film.video is None or not film.video.is_file():
        raise LocomadError(f"{film.video}: a vision-language describer needs the film itself")
    frames = SlotFrames(film.video, card.describer.frames, card.describer.frame_size)
    return VLMDescriber(card, backend, frames, cache)
