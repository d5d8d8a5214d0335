"""SRT text for test inputs, written with the package's own timestamp writer."""

from __future__ import annotations

from collections.abc import Iterable

from locomad_cli.tracks.writers import format_timestamp


def srt_text(cues: Iterable[tuple[float, float, str]]) -> str:
    """Numbered SRT blocks, one per (start, end, text) cue, in the order given."""
    return "".join(
        f"{i}\n{format_timestamp(a, ',')} --> {format_timestamp(b, ',')}\n{text}\n\n"
        for i, (a, b, text) in enumerate(cues, 1)
    )
