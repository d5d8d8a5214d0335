"""What a demo description gets right, attribute by attribute, against the film's world.json.

CIDEr on the demo's templated sentences rewards the template: "Olga walks over to the
table." scores well in a slot where someone else picks up a cup in another room. A user
notices the room, the look, the prop, the action and the name, so each is scored on its own:

- location: of the descriptions that place the scene (the room's name, or a seat/surface
  that only one room has), the share that place it in the room on screen (world.json's
  action.location); how often they place it at all is `location_said` — the world's own
  AD leaves the room out of most sentences at random ("Tom goes out."), so demanding it
  where the reference has it would score the template, not the seeing;
- look: slots whose reference shows a look (entrances: "a man in a green coat"); the
  prediction names the same garment;
- prop: slots whose action involves a prop (pick up, put down, hand over); the prediction
  names the same prop. In these the prop is mostly in a hand or behind a body (a linear
  probe on the frames names it 0.2 of the time), so it is what the description remembers
  from the scene's opening as much as what it sees;
- prop_seen: the scene's opening slots, where the prop lies in plain view on its surface
  ("a yellow book lies on the low wall"; the frame probe: 0.9); the same prop;
- action: every slot; the prediction's verb must be the world's action (enter, pick up, ...);
- name: references that name a cast member; the prediction names the same one first;
- repeats: predictions identical to one of the previous three of the same film.

Parsing a prediction is a lookup in the world's own closed vocabulary (world.py), so it is
exact for the templates the model was trained on and strict for anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from locomad_cli.demo.world import LOCATIONS, LOOKS, NAMES, PROPS

ATTRIBUTES = ("location", "look", "prop", "prop_seen", "action", "name")
REPEAT_WINDOW = 3

_NAME_SET = {n.lower() for n in NAMES}
# Seats and surfaces that belong to exactly one room ("bench" is in the garden and the street).
_PLACE_WORDS: list[tuple[str, int]] = []
for _i, _loc in enumerate(LOCATIONS):
    _PLACE_WORDS.append((_loc.name, _i))
for _i, _loc in enumerate(LOCATIONS):
    for _w in (_loc.seat, _loc.surface):
        if sum(_w in (x.seat, x.surface) for x in LOCATIONS) == 1:
            _PLACE_WORDS.append((_w, _i))
# Longest phrase first, so "side table" wins over "table" and "deck chair" over "chair".
_PLACE_WORDS.sort(key=lambda p: -len(p[0]))

ACTION_PATTERNS: tuple[tuple[str, str], ...] = (
    ("enter", r"\b(enters|comes into|walks into|returns to)\b"),
    ("leave", r"\b(leaves the|walks out|goes out)\b"),
    ("walk", r"\bwalks over to\b"),
    ("pickup", r"\bpicks up\b"),
    ("putdown", r"\bputs the\b"),
    ("give", r"\bhands\b"),
    ("getup", r"\bgets back to\b"),
    ("sit", r"\bsits down\b"),
    ("stand", r"\b(stands up|gets up)\b"),
    ("fall", r"\b(falls|trips)\b"),
    ("jump", r"\bjumps\b"),
    ("wave", r"\bwaves\b"),
    ("meet", r"\b(embrace|shakes hands)\b"),
    ("rain", r"\brain begins\b"),
    ("lights", r"\bflicker\b"),
    ("establish", r"\b(is empty|is quiet|a wide view|lies on the)\b"),
)


def _find(text: str, phrases: list[tuple[str, int]]) -> int | None:
    """The value of the phrase that occurs first in `text` (longest phrase at a tie)."""
    low = " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "
    best: tuple[int, int] | None = None
    for phrase, value in phrases:
        at = low.find(f" {phrase} ")
        if at >= 0 and (best is None or at < best[0]):
            best = (at, value)
    return None if best is None else best[1]


def location_of(text: str) -> int | None:
    """Index into LOCATIONS of the room `text` places the scene in, or None."""
    return _find(text, _PLACE_WORDS)


def look_of(text: str) -> int | None:
    """Index into LOOKS of the first garment `text` mentions, or None."""
    return _find(text, [(look.garment, i) for i, look in enumerate(LOOKS)])


def prop_of(text: str) -> int | None:
    """Index into PROPS of the first prop `text` mentions, or None."""
    return _find(text, [(p.name, i) for i, p in enumerate(PROPS)])


def action_of(text: str) -> str | None:
    """The world action kind `text` describes (the first pattern that matches), or None."""
    low = text.lower()
    for kind, pattern in ACTION_PATTERNS:
        if re.search(pattern, low):
            return kind
    return None


def name_of(text: str) -> str | None:
    """The first word of `text` that is a pool name (lower-cased), or None."""
    for word in re.findall(r"[A-Za-z]+", text):
        if word.lower() in _NAME_SET:
            return word.lower()
    return None


PROP_ACTIONS = ("pickup", "putdown", "give")


def expected(slot: dict) -> dict[str, object]:
    """What a description of this world.json slot must say, per attribute (None: the slot
    does not count for that attribute)."""
    ref, action = slot["text"], slot["action"]
    return {
        "location": action["location"],
        "look": look_of(ref),
        "prop": action["prop"] if action["kind"] in PROP_ACTIONS else None,
        "prop_seen": action["prop"] if action["kind"] == "establish" else None,
        "action": action["kind"],
        "name": name_of(ref),
    }


_READERS = {
    "location": location_of,
    "look": look_of,
    "prop": prop_of,
    "prop_seen": prop_of,
    "action": action_of,
    "name": name_of,
}


def is_repeat(texts: list[str], i: int, window: int = REPEAT_WINDOW) -> bool:
    """Text i equals one of the `window` before it (case and spacing ignored)."""
    norm = [" ".join(t.lower().split()) for t in texts[max(0, i - window) : i + 1]]
    return norm[-1] in norm[:-1]


@dataclass
class Score:
    hits: int = 0
    count: int = 0

    @property
    def accuracy(self) -> float:
        return self.hits / self.count if self.count else 0.0


def score_films(films: list[tuple[list[dict], list[str]]]) -> dict[str, float]:
    """Per-attribute accuracy, the repeat rate and the reference's repeat rate over films
    given as (world.json slots, predictions in slot order)."""
    scores = {a: Score() for a in ATTRIBUTES}
    said_place = Score()
    repeats, ref_repeats, total = 0, 0, 0
    for slots, preds in films:
        if len(slots) != len(preds):
            raise ValueError("one prediction per slot")
        refs = [s["text"] for s in slots]
        for i, (slot, pred) in enumerate(zip(slots, preds, strict=True)):
            for attr, want in expected(slot).items():
                said = _READERS[attr](pred)
                if attr == "location":
                    said_place.count += 1
                    said_place.hits += said is not None
                    if said is None:
                        continue  # precision: only descriptions that place the scene
                if want is None:
                    continue
                scores[attr].count += 1
                scores[attr].hits += said == want
            repeats += is_repeat(preds, i)
            ref_repeats += is_repeat(refs, i)
            total += 1
    out: dict[str, float] = {a: s.accuracy for a, s in scores.items()}
    out |= {f"{a}_count": float(s.count) for a, s in scores.items()}
    out["location_said"] = said_place.accuracy
    out["repeat_rate"] = repeats / total if total else 0.0
    out["reference_repeat_rate"] = ref_repeats / total if total else 0.0
    return out
