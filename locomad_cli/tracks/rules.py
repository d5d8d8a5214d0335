"""Quality rules on a describer's candidates: one place, the same for every describer.

A describer gives, per slot, its candidates best first (the n-best of a beam search, or one
text). A candidate that breaks a rule gives way to the next; when every candidate breaks one,
the first that is at least a whole sentence is kept (a flawed description is better than
silence, and the counts say so). The rules, in the order they are checked:

- **empty_or_truncated**: nothing to say (no letter), or a sentence cut off: it does not end
  in . ! ? (or a closing quote after one), or its last word is one a sentence cannot end on
  ("the", "and", "to" ... : the decoder ran out of tokens);
- **repeat**: word for word (case and spacing aside) one of the last `recent` descriptions
  (llm.avoid_repeats, 3 by default): a model fed its own output can lock into copying it;
- **unheard_name**: names a character the listener has not heard named yet (the cast's names
  that neither the slot's dialogue nor a chosen context item holds): it has to say who by
  other words ("a man in a green coat") until the film has said the name;
- **same_on_both_sides**: one character on both sides of an action that takes two ("Luis
  hands Luis the white letter.", "Carl and Carl embrace.", "Amy shakes hands with Amy."):
  a name said twice in a sentence with "and" or a two-person verb between, or a verb turned
  to someone right before the second ("Sam waves at Sam.", "Leo walks over to Leo.").

Pure text: no model, no torch. `choose` picks for one slot; `apply` does it on a track row
(and records what gave way); `summary` counts what each rule did over a track.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

RULES = ("empty_or_truncated", "repeat", "unheard_name", "same_on_both_sides")

_ENDS = re.compile(r"[.!?…][\"'”’)]*$")
_DANGLING = frozenset(
    "a an the and or but to of with at in on into onto from by for his her their its my your "
    "our as than that who which".split()
)
_TWO_PERSON = frozenset(
    """give gives giving gave hand hands handing handed pass passes passing passed offer
    offers offering offered show shows showing showed hug hugs hugging hugged embrace embraces
    embracing embraced kiss kisses kissing kissed greet greets greeting greeted meet meets
    meeting met thank thanks thanking thanked shake shakes shaking shook push pushes pushing
    pushed pull pulls pulling pulled help helps helping helped follow follows following
    followed throw throws throwing threw toss tosses tossing tossed""".split()
)
_TOWARDS = re.compile(
    r"\b(?:wave|waves|waving|waved|smile|smiles|smiling|smiled|nod|nods|nodding|nodded|wink|"
    r"winks|winked|point|points|pointing|pointed|look|looks|looking|looked|stare|stares|"
    r"stared|talk|talks|talking|talked|speak|speaks|speaking|spoke|dance|dances|dancing|"
    r"danced|run|runs|running|ran|walk|walks|walking|walked)\s+(?:over\s+|up\s+)?"
    r"(?:at|to|with|towards?)\s*$"
)
"""A one-person verb turned to someone else, right before the second name."""
_NAME = re.compile(r"\b[A-Z][a-z]+(?:-[A-Z][a-z]+)?\b")
_NOT_NAMES = frozenset(
    "A An The He She They It His Her Their Its In On At Then Now Later Inside Outside".split()
)


def text_key(text: str) -> str:
    """A description as descriptions are compared: case and spacing aside."""
    return " ".join(text.lower().split())


def is_repeat(text: str, recent: Iterable[str]) -> bool:
    """Word for word one of `recent` (case and spacing aside)."""
    key = text_key(text)
    return any(key == text_key(r) for r in recent)


def names_heard(names: Sequence[str], said: str) -> tuple[list[str], list[str]]:
    """(unheard, heard): which of `names` the text `said` holds as whole words, in any case."""
    heard = [n for n in names if re.search(rf"\b{re.escape(n)}\b", said, re.IGNORECASE)]
    return [n for n in names if n not in heard], heard


def is_empty_or_truncated(text: str) -> bool:
    words = re.findall(r"[A-Za-z0-9']+", text)  # a number ends a sentence too ("at 9")
    if not words:
        return True
    end = text.strip()
    if _ENDS.search(end) is None or re.search(r"[,;:]\s*[.!?]+$", end):
        return True
    return words[-1].lower() in _DANGLING


def names_unheard(text: str, unheard: Sequence[str]) -> list[str]:
    """The names of `unheard` that `text` says."""
    return [n for n in unheard if re.search(rf"\b{re.escape(n)}\b", text, re.IGNORECASE)]


def same_on_both_sides(text: str, names: Sequence[str] = ()) -> str | None:
    """The name said on both sides of a two-person action, if any: a name (one of `names`,
    or any capitalised word) twice in one sentence with "and" alone, or a two-person verb and
    no other name, between the two ("Amy gives Leo a book and Amy smiles" is fine)."""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        found = [m for m in _NAME.finditer(sentence) if m.group() not in _NOT_NAMES]
        found += [
            m
            for n in names
            for m in re.finditer(rf"\b{re.escape(n)}\b", sentence)
            if not _NAME.fullmatch(m.group())
        ]
        by_name: dict[str, list[re.Match]] = {}
        for m in sorted(found, key=lambda m: m.start()):
            by_name.setdefault(m.group(), []).append(m)
        for name, ms in by_name.items():
            for first, second in zip(ms[:-1], ms[1:], strict=True):
                if any(first.end() <= m.start() < second.start() for m in found):
                    continue  # someone else in between: the action may be theirs
                between = sentence[first.end() : second.start()].lower()
                words = re.findall(r"[a-z]+", between)
                if words == ["and"] or any(w in _TWO_PERSON for w in words):
                    return name
                if _TOWARDS.search(between):  # "Sam waves at Sam."
                    return name
    return None


def broken(
    text: str, recent: Sequence[str] = (), unheard: Sequence[str] = (), names: Sequence[str] = ()
) -> str | None:
    """The first rule (RULES order) `text` breaks, None when it breaks none."""
    if is_empty_or_truncated(text):
        return "empty_or_truncated"
    if is_repeat(text, recent):
        return "repeat"
    if names_unheard(text, unheard):
        return "unheard_name"
    if same_on_both_sides(text, names) is not None:
        return "same_on_both_sides"
    return None


def choose(
    candidates: Sequence[str],
    recent: Sequence[str] = (),
    unheard: Sequence[str] = (),
    names: Sequence[str] = (),
) -> tuple[int, list[tuple[int, str]]]:
    """(index of the candidate to use, [(index, rule) of each candidate that gave way]).
    The first candidate that breaks no rule; none: the first whole sentence, else the first
    (then every candidate is listed)."""
    gave_way: list[tuple[int, str]] = []
    for i, text in enumerate(candidates):
        rule = broken(text, recent, unheard, names)
        if rule is None:
            return i, gave_way
        gave_way.append((i, rule))
    whole = [i for i, r in gave_way if r != "empty_or_truncated"]
    return (whole[0] if whole else 0), gave_way


def apply(row: dict[str, Any], recent: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
    """The rules on one track row as describe writes it (`text`, `candidates`, `subtitles`,
    `selected`): its text becomes the chosen candidate, the candidates are reordered so the
    chosen one is first, and `rules` records what gave way (absent when nothing did).
    Names are heard from the slot's dialogue and the chosen context items."""
    texts = [row.get("text", "")]
    texts += [c["text"] for c in row.get("candidates") or [] if c["text"] not in texts]
    said = " ".join(
        [row.get("subtitles") or ""]
        + [f"{s.get('text', '')} {s.get('subtitle', '')}" for s in row.get("selected") or []]
    )
    unheard, _ = names_heard(names, said)
    pick, gave_way = choose(texts, recent, unheard, names)
    row["text"] = texts[pick]
    cands = row.get("candidates") or []
    first = [c for c in cands if c["text"] == texts[pick]]
    if first:
        row["candidates"] = first[:1] + [c for c in cands if c is not first[0]]
    kept = broken(texts[pick], recent, unheard, names)
    before = [{"text": texts[i], "rule": r} for i, r in gave_way if i < pick]
    if before or kept:
        row["rules"] = {"gave_way": before, **({"kept_breaking": kept} if kept else {})}
    return row


def summary(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What each rule did over a track: candidates that gave way to the next, and slots whose
    kept description still breaks it (every candidate did)."""
    gave = dict.fromkeys(RULES, 0)
    kept = dict.fromkeys(RULES, 0)
    changed = 0
    for row in rows:
        r = row.get("rules")
        if not r:
            continue
        for g in r.get("gave_way", []):
            gave[g["rule"]] += 1
        if r.get("gave_way"):
            changed += 1
        if r.get("kept_breaking"):
            kept[r["kept_breaking"]] += 1
    return {"gave_way": gave, "slots_changed": changed, "kept_breaking": kept}
