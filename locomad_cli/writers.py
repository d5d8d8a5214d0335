"""Writers for an AD track: SRT, WebVTT and JSON, chosen by `get_writer(format)` (whisper's shape).

A track is a plain dict (what `describe()` returns and the JSON file holds):
`{"film", "card", "setting", "tool", "version", "slots": [{"index", "start", "end", "text",
"selected": [{"text", "subtitle", "start", "end", "score"}], "subtitles", "source"}]}`.
SRT and WebVTT are what players and editors take; the JSON keeps the provenance of every
description (which earlier descriptions the DSM chose, with their scores) for studio pipelines
and for `locomad evaluate`. Every file is written atomically: a crash leaves the old file or
none, never half of one.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, TextIO

from locomad_cli.utils import atomic_open, parse_choice_list

FORMATS = ("srt", "vtt", "json")


def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """HH:MM:SS.mmm (hours always shown: SRT requires them, WebVTT allows them)."""
    if seconds < 0:
        raise ValueError(f"negative timestamp {seconds}")
    ms = round(seconds * 1000.0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def one_line(text: str) -> str:
    """Cue text on one line: a blank line would end the cue, '-->' would start a new one."""
    return " ".join(text.replace("-->", "->").split())


class ResultWriter(ABC):
    extension: str

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)

    def path_for(self, stem: str) -> Path:
        return self.output_dir / f"{stem}.ad.{self.extension}"

    def __call__(self, track: dict[str, Any], stem: str) -> Path:
        path = self.path_for(stem)
        with atomic_open(path, "w", newline="\n") as f:
            self.write_result(track, f)
        return path

    @abstractmethod
    def write_result(self, track: dict[str, Any], file: TextIO) -> None:
        """Write the whole track to `file` in this format."""


class SubtitlesWriter(ResultWriter):
    decimal_marker: str

    def cues(self, track: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(start, end, text) per slot with text, in film order."""
        out = []
        for s in sorted(track["slots"], key=lambda s: (s["start"], s["end"])):
            text = one_line(s.get("text", ""))
            if not text:
                continue
            start = format_timestamp(s["start"], self.decimal_marker)
            end = format_timestamp(s["end"], self.decimal_marker)
            out.append((start, end, text))
        return out


class WriteSRT(SubtitlesWriter):
    extension = "srt"
    decimal_marker = ","

    def write_result(self, track: dict[str, Any], file: TextIO) -> None:
        for i, (start, end, text) in enumerate(self.cues(track), 1):
            file.write(f"{i}\n{start} --> {end}\n{text}\n\n")


class WriteVTT(SubtitlesWriter):
    extension = "vtt"
    decimal_marker = "."

    def write_result(self, track: dict[str, Any], file: TextIO) -> None:
        film = one_line(str(track.get("film", "")))
        file.write("WEBVTT\n\n")
        file.write(
            f"NOTE\nAudio description of {film}, written by {track.get('tool', 'locomad')} "
            f"{track.get('version', '')} with model card {one_line(str(track.get('card', '')))} "
            f"({track.get('setting', '')} context).\n"
            f'Load it as <track kind="descriptions" src="{film}.ad.vtt" srclang="en"> '
            "so that players speak it (screen readers, Able Player).\n\n"
        )
        for i, (start, end, text) in enumerate(self.cues(track), 1):
            # WebVTT cue text is HTML-like: escape what would read as markup
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            file.write(f"ad-{i}\n{start} --> {end}\n{text}\n\n")


class WriteJSON(ResultWriter):
    extension = "json"

    def write_result(self, track: dict[str, Any], file: TextIO) -> None:
        json.dump(track, file, ensure_ascii=False, indent=2)
        file.write("\n")


WRITERS: dict[str, type[ResultWriter]] = {"srt": WriteSRT, "vtt": WriteVTT, "json": WriteJSON}


def parse_formats(spec: str) -> list[str]:
    """'srt,vtt' → ['srt', 'vtt']; 'all' → every format."""
    return parse_choice_list(spec, list(FORMATS), "output format")


def get_writer(output_format: str, output_dir: str | Path):
    """A callable `(track, stem) -> list[Path]` writing the format(s) named (comma list or all)."""
    writers = [WRITERS[f](output_dir) for f in parse_formats(output_format)]

    def write_all(track: dict[str, Any], stem: str) -> list[Path]:
        return [w(track, stem) for w in writers]

    return write_all
