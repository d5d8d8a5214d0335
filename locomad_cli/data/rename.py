"""Character names as placeholders: rename a training batch's characters at random.

A film's characters are named by the film: the same face is "Tom" in one film and "Omar" in
the next. A decoder trained on a few films learns which name goes with which film (its
rooms, its cast's looks) instead of reading the name from where a viewer learns it, the
dialogue ("Hello, Tom.") and the earlier AD. Renaming every character of a training clip
consistently (its target, its dialogue, its context items) with names drawn afresh from a
pool, step by step, leaves the decoder one way to be right: copy the name from the clip's
own dialogue or context. AutoAD's character banks serve the same end with a cast list; this
needs only the pool of names (`locomad train --rename-names FILE`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from locomad_cli.data.records import ClipBatch, ContextItem
from locomad_cli.utils import LocomadError


def read_names(path: str | Path) -> list[str]:
    """One name per line (blank lines and '#' comments skipped), at least two, no repeats."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LocomadError(f"{path}: cannot read the names file ({e})") from None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if len(names) < 2:
        raise LocomadError(f"{path}: a names file needs at least two names, one per line")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise LocomadError(f"{path}: '{n}' is listed twice")
        seen.add(n)
    return names


def name_pattern(names: list[str]) -> re.Pattern[str]:
    """Whole words only ('Tom' but not 'Tomato'), longest name first ('Ann' inside 'Anna')."""
    alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<!\w)({alts})(?!\w)")


@dataclass(frozen=True)
class Renamer:
    """A pool of names and its pattern, made once per run; called on each training batch."""

    names: list[str]
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", name_pattern(self.names))

    def __call__(self, batch: ClipBatch, generator: torch.Generator) -> ClipBatch:
        return rename_batch(batch, self.names, self.pattern, generator)


def rename_texts(
    texts: list[str], names: list[str], pattern: re.Pattern[str], generator: torch.Generator
) -> list[str]:
    """`texts` (one clip's) with the pool's names that occur in them mapped
    one-to-one onto names drawn at random from the pool, the same map for every text."""
    found = sorted({m.group(1) for s in texts for m in pattern.finditer(s)})
    order = torch.randperm(len(names), generator=generator)[: len(found)].tolist()
    table = {old: names[j] for old, j in zip(found, order, strict=True)}
    if not table:
        return list(texts)
    return [pattern.sub(lambda hit: table[hit.group(1)], s) for s in texts]


def rename_batch(
    batch: ClipBatch, names: list[str], pattern: re.Pattern[str], generator: torch.Generator
) -> ClipBatch:
    """The batch with each clip's characters renamed (`rename_texts` over the clip's target,
    dialogue, context texts and their dialogue). Frames and the cached context text features
    are left as they are (names carry no picture)."""
    texts, subtitles, contexts = [], [], []
    for text, sub, items in zip(batch.texts, batch.subtitles, batch.contexts, strict=True):
        every = [text, sub, *(t for c in items for t in (c.text, c.subtitle))]
        new = rename_texts(every, names, pattern, generator)
        texts.append(new[0])
        subtitles.append(new[1])
        pairs = iter(new[2:])
        contexts.append([ContextItem(next(pairs), next(pairs), c.start, c.end) for c in items])
    return dataclasses.replace(batch, texts=texts, subtitles=subtitles, contexts=contexts)
