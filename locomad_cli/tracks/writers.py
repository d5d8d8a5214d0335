"""Writers for an AD track: SRT, WebVTT, JSON and DAPT, chosen by `get_writer(format)` (whisper's
shape).

A track is a plain dict (what `describe()` returns and the JSON file holds):
`{"film", "card", "setting", "tool", "version", "slots": [{"index", "start", "end", "text",
"selected": [{"text", "subtitle", "start", "end", "score"}], "subtitles", "source"}]}`.
Proposed slots also carry `"shots"` (the boundaries of the shots they lie in) and `"why"` (the
gap, the speech and subtitle intervals bounding it, what starts and ends the slot, a reason),
and the track a `"slot_plan"` (slots.SlotPlan.as_json: speech, cuts, sizes, skipped gaps).
SRT and WebVTT are what players and editors take; the JSON keeps the provenance of every
description (which earlier descriptions the DSM chose, with their scores) for studio pipelines
and for `locomad evaluate`. Every file is written atomically: a crash leaves the old file or
none, never half of one.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, TextIO

from locomad_cli.utils import atomic_open, parse_choice_list

FORMATS = ("srt", "vtt", "json")
XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 documents cannot hold."""
EXTRA_FORMATS = ("dapt",)
"""Written only when named (`-f dapt`, `-f all,dapt`): `all` stays the three tracks players
and `locomad evaluate` read."""


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
        for s in self.text_slots(track):
            start = format_timestamp(s["start"], self.decimal_marker)
            end = format_timestamp(s["end"], self.decimal_marker)
            out.append((start, end, one_line(s["text"])))
        return out

    @staticmethod
    def text_slots(track: dict[str, Any]) -> list[dict[str, Any]]:
        """The slots with text, in film order (what `cues` formats)."""
        slots = sorted(track["slots"], key=lambda s: (s["start"], s["end"]))
        return [s for s in slots if one_line(s.get("text", ""))]


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
        pairs = zip(self.text_slots(track), self.cues(track), strict=True)
        for i, (slot, (start, end, text)) in enumerate(pairs, 1):
            if slot.get("pause"):  # extended AD (voice.py): where the picture holds
                at, held = slot["pause"]["at"], slot["pause"]["duration"]
                file.write(
                    f"NOTE extended AD: ad-{i} pauses the picture at "
                    f"{format_timestamp(at)} for {held:.3f} s\n\n"
                )
            # WebVTT cue text is HTML-like: escape what would read as markup
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            file.write(f"ad-{i}\n{start} --> {end}\n{text}\n\n")


class WriteJSON(ResultWriter):
    extension = "json"

    def write_result(self, track: dict[str, Any], file: TextIO) -> None:
        json.dump(track, file, ensure_ascii=False, indent=2)
        file.write("\n")


class WriteDAPT(ResultWriter):
    """The AD script as DAPT (W3C's TTML2 profile for dubbing and audio description scripts):
    one script event (`div`) per description with its times and text. A voiced track (slots
    carrying `audio`, see voice.py) is an `asRecorded` script: each event is timed to its
    recording and its text holds an `<audio>` reference into the AD stem (`clipBegin`,
    `clipEnd`); an extended-AD pause goes in a `locomad:pause` metadata element (DAPT has no
    word for it). Otherwise it is a `preRecording` script: times and text. Built with
    ElementTree, so always well-formed XML."""

    extension = "dapt.ttml"

    def write_result(self, track: dict[str, Any], file: TextIO) -> None:
        import xml.etree.ElementTree as ET

        ns = {
            "": "http://www.w3.org/ns/ttml",
            "ttp": "http://www.w3.org/ns/ttml#parameter",
            "ttm": "http://www.w3.org/ns/ttml#metadata",
            "tta": "http://www.w3.org/ns/ttml#audio",
            "daptm": "http://www.w3.org/ns/ttml/profile/dapt#metadata",
            "locomad": "urn:locomad:dapt-metadata",
        }
        for prefix, uri in ns.items():
            ET.register_namespace(prefix, uri)

        def q(name: str) -> str:
            prefix, _, local = name.rpartition(":")
            if prefix == "xml":
                return f"{{http://www.w3.org/XML/1998/namespace}}{local}"
            return f"{{{ns[prefix]}}}{local}"

        def clock(t: float) -> str:
            return format_timestamp(max(0.0, t), ".")

        def text_of(s: dict[str, Any]) -> str:
            # XML 1.0 cannot carry most control characters (a model's stray bytes): drop them
            return XML_INVALID.sub("", one_line(s.get("text", "")))

        slots = sorted(
            (s for s in track["slots"] if text_of(s)), key=lambda s: (s["start"], s["end"])
        )
        voiced = any(s.get("audio") for s in slots)
        tt = ET.Element(q("tt"))
        tt.set(q("ttp:contentProfiles"), "http://www.w3.org/ns/ttml/profile/dapt1.0/content")
        tt.set(q("ttp:timeBase"), "media")
        tt.set(q("xml:lang"), str(track.get("language") or "en"))
        tt.set(q("daptm:langSrc"), "zxx")  # the source is the picture: no language
        tt.set(q("daptm:scriptRepresents"), "visual.nonText")
        tt.set(q("daptm:scriptType"), "asRecorded" if voiced else "preRecording")
        meta = ET.SubElement(ET.SubElement(tt, q("head")), q("metadata"))
        ET.SubElement(meta, q("ttm:title")).text = f"Audio description of {track.get('film', '')}"
        ET.SubElement(meta, q("ttm:desc")).text = (
            f"Written by {track.get('tool', 'locomad')} {track.get('version', '')} with model "
            f"card {track.get('card', '')} ({track.get('setting', '')} context)."
        )
        body = ET.SubElement(tt, q("body"))
        for i, s in enumerate(slots, 1):
            audio = s.get("audio") or {}
            div = ET.SubElement(body, q("div"))
            div.set(q("xml:id"), f"ad-{i}")
            div.set("begin", clock(s["start"]))
            div.set("end", clock(s["end"]))
            div.set(q("daptm:represents"), "visual.nonText")
            if s.get("pause"):
                md = ET.SubElement(div, q("metadata"))
                pause = ET.SubElement(md, q("locomad:pause"))
                pause.set("at", clock(s["pause"]["at"]))
                pause.set("dur", f"{s['pause']['duration']:.3f}s")
            span = ET.SubElement(ET.SubElement(div, q("p")), q("span"))
            if audio:
                a = ET.SubElement(span, q("audio"))
                a.set("src", str(audio["src"]))
                a.set("clipBegin", clock(audio["begin"]))
                a.set("clipEnd", clock(audio["end"]))
                a.set("type", "audio/wave")
                a.tail = text_of(s)
            else:
                span.text = text_of(s)
        ET.indent(tt, space="  ")
        file.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        file.write(ET.tostring(tt, encoding="unicode"))
        file.write("\n")


WRITERS: dict[str, type[ResultWriter]] = {
    "srt": WriteSRT,
    "vtt": WriteVTT,
    "json": WriteJSON,
    "dapt": WriteDAPT,
}


def parse_formats(spec: str | list[str]) -> list[str]:
    """'srt,vtt' → ['srt', 'vtt']; 'all' → srt, vtt and json; DAPT when named ('all,dapt')."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    every = any(n.strip().lower() == "all" for n in names)
    rest = [n for n in names if n.strip() and n.strip().lower() != "all"]
    if every and not rest:
        return list(FORMATS)
    chosen = parse_choice_list(rest or spec, list(FORMATS + EXTRA_FORMATS), "output format")
    return [*FORMATS, *(c for c in chosen if c not in FORMATS)] if every else chosen


def get_writer(output_format: str, output_dir: str | Path):
    """A callable `(track, stem) -> list[Path]` writing the format(s) named (comma list or all)."""
    writers = [WRITERS[f](output_dir) for f in parse_formats(output_format)]

    def write_all(track: dict[str, Any], stem: str) -> list[Path]:
        return [w(track, stem) for w in writers]

    return write_all
