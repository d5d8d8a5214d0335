"""Context proposals (Sec. 3.2): for each slot, the earlier descriptions of the same film.

The proposal is the `proposal_len` descriptions that come right before the slot in film
order (oldest first), each with its own subtitles. It never holds the slot itself, a later
slot, or a slot of another film (or, for LSMDC, of another five-clip set). In the oracle
setting used for training and validation these are the reference descriptions.
"""

from __future__ import annotations

from locomad_cli.data.dataset import Annotation


def film_order(anns: list[Annotation]) -> list[int]:
    """Indices of `anns` sorted by (group, start, end, position in the file)."""
    return sorted(range(len(anns)), key=lambda i: (anns[i].group, anns[i].start, anns[i].end, i))


def build_contexts(anns: list[Annotation], proposal_len: int) -> list[list[int]]:
    """For each annotation, the indices of its context proposal, oldest first.

    Candidates are the slots of the same group that come earlier in film order (by start,
    then end, then file position); the last `proposal_len` of them are kept."""
    contexts: list[list[int]] = [[] for _ in anns]
    if proposal_len <= 0:
        return contexts
    previous: list[int] = []
    group = None
    for i in film_order(anns):
        if anns[i].group != group:
            group, previous = anns[i].group, []
        contexts[i] = previous[-proposal_len:]
        previous.append(i)
    return contexts
