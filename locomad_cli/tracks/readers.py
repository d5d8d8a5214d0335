"""Reading subtitles and timed AD files: SRT, WebVTT, CSV and JSON into sorted `Cue`s.

Real subtitle files are messy: old rips are cp1252 or latin-1, Windows tools write UTF-16 with
a BOM, fansubs carry ASS override tags (`{\\an8}`) and HTML (`<i>`, `<font>`), cues overlap or
come out of order, and one broken block is common. A film's subtitles are the only thing that
keeps the AD from talking over dialogue, so one bad block must never lose the rest: it is
skipped, and everything else is read. Skipped blocks are reported in one warning line per kind
("skipped 16 malformed cue blocks, first at line 3"), not one line each.

Every time read here is checked to be a finite number of sane size (utils.check_seconds):
NaN, infinity and 400-digit numbers are refused with file:line where they enter, because
later arithmetic (frame indices, slot planning) would either crash or silently misbehave.
"""

from __future__ import annotations

import codecs
import csv
import html
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysrt
import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

from locomad_cli.utils import LocomadError, check_seconds

log = logging.getLogger(__name__)


@dataclass
class Cue:
    """One timed piece of text, in seconds from the film's start."""

    start: float
    end: float
    text: str
    line: int = 0
    """Line of the source file where the cue's block starts (0 when unknown)."""


DIALOGUE_LOOKBACK = 10.0
"""Seconds of dialogue before a slot that go with it (at most; never past the previous slot)."""


def dialogue_windows(
    spans: list[tuple[float, float]], lookback: float = DIALOGUE_LOOKBACK
) -> list[float]:
    """Where the dialogue that goes with each AD slot begins (spans in film order).

    AD is placed in the gaps between lines, so the lines that overlap a slot are usually none;
    the dialogue that belongs to a description is the lines that start since the previous slot
    ended (at most `lookback` seconds back), plus any line the slot overlaps. Training,
    `describe` and the context prompt's `[b_s s_i e_s]` all use this one rule."""
    begins: list[float] = []
    prev_end: float | None = None
    for start, end in spans:
        begin = start - lookback if prev_end is None else max(start - lookback, prev_end)
        begins.append(min(begin, start))
        prev_end = end if prev_end is None else max(prev_end, end)
    return begins


def belongs(cue_start: float, cue_end: float, begin: float, start: float, end: float) -> bool:
    """A line goes with the slot [start, end] whose dialogue begins at `begin` when it starts
    in [begin, end) or overlaps the slot itself."""
    return (begin <= cue_start < end) or (cue_start < end and cue_end > start)


def dialogue_text(cues: list[Cue], begin: float, start: float, end: float) -> str:
    """The lines that go with a slot (see `belongs`), joined with spaces."""
    return " ".join(c.text for c in cues if belongs(c.start, c.end, begin, start, end))


def slot_dialogue(cues: list[Cue], spans: list[tuple[float, float]]) -> list[str]:
    """Each slot's dialogue (spans in film order): dialogue_windows, then dialogue_text."""
    begins = dialogue_windows(spans)
    return [dialogue_text(cues, b, s, e) for b, (s, e) in zip(begins, spans, strict=True)]


# --- decoding ---------------------------------------------------------------------------------

_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]


def decode_text(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """Decode subtitle bytes, returning (text, encoding used).

    A BOM is authoritative; then UTF-16 without a BOM (every other byte NUL); then strict
    UTF-8. Past that, charset-normalizer's guess is taken only when the bytes look like a
    non-Latin script (Cyrillic cp1251, Greek, Japanese, Chinese…): on short Western-European
    files it guesses cp1257 for cp1252 French and turns 'naïve' into 'naļve', so Latin text
    falls back to cp1252 (what Windows subtitle tools write, a superset of latin-1's printable
    range) and then latin-1, which decodes any byte. Central-European code pages (cp1250)
    cannot be told from cp1252 reliably: pass `encoding` for them.
    """
    if encoding:
        try:
            return data.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError) as e:
            raise LocomadError(f"cannot decode as {encoding}: {e}") from None
    matching = [enc for bom, enc in _BOMS if data.startswith(bom)]
    for enc in matching:  # FF FE 00 00 is UTF-32's BOM, or UTF-16's followed by a NUL
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            continue
    if matching:
        return data.decode(matching[-1], errors="replace"), matching[-1]
    head = data[:400]
    if len(head) >= 4:
        if head[1::2].count(0) > len(head) // 4 and head[0::2].count(0) == 0:
            return data.decode("utf-16-le", errors="replace"), "utf-16-le"
        if head[0::2].count(0) > len(head) // 4 and head[1::2].count(0) == 0:
            return data.decode("utf-16-be", errors="replace"), "utf-16-be"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if _mostly_high_byte_runs(data):
        import charset_normalizer

        best = charset_normalizer.from_bytes(data).best()
        if best is not None:
            return str(best), best.encoding
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _mostly_high_byte_runs(data: bytes) -> bool:
    """Whether most bytes >= 0x80 come in runs of three or more: whole words of a non-Latin
    script (Cyrillic, Greek, CJK). Accented Latin letters sit alone or in pairs inside
    ASCII words ('déjà', 'Größe')."""
    high = in_runs = run = 0
    for b in data + b"\x00":
        if b >= 0x80:
            run += 1
            continue
        high += run
        if run >= 3:
            in_runs += run
        run = 0
    return high > 0 and in_runs > high / 2


MAX_TEXT_BYTES = 64 * 1024 * 1024
"""Larger than any subtitle or AD-times file (a feature film's SRT is ~100 kB): a bigger file
is the wrong file (a video given as --subs), refused before it is read into memory."""


def looks_binary(head: bytes) -> bool:
    """Whether the first bytes of a file are binary data rather than text in any encoding
    decode_text reads: NUL bytes outside the UTF-16/32 patterns, or many control codes."""
    if not head:
        return False
    if any(head.startswith(bom) for bom, _ in _BOMS):
        return False
    even, odd = head[0::2].count(0), head[1::2].count(0)
    if len(head) >= 4 and max(even, odd) > len(head) // 4 and min(even, odd) == 0:
        return False  # UTF-16 without a BOM
    controls = sum(1 for b in head if b < 0x20 and b not in (0x09, 0x0A, 0x0C, 0x0D))
    return controls > max(1, len(head) // 100)


def read_text(path: str | Path, encoding: str | None = None) -> str:
    """A text file's content, decoded (see decode_text), with Unix line ends. Binary files
    and files far too large for subtitles are refused in one line."""
    path = Path(path)
    try:
        if path.is_dir():
            raise LocomadError(f"{path}: is a folder, not a file")
        # read at most one byte past the limit: a device or pipe (/dev/zero, a stream that
        # never ends) has no size to check beforehand
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:
            size = max(path.stat().st_size, len(data))
            raise LocomadError(
                f"{path}: {size / 2**20:.0f} MiB or more is far too large for a subtitle, "
                "times or cast file (is it the right file?)"
            )
    except OSError as e:
        raise LocomadError(f"{path}: cannot read ({e.strerror or e})") from None
    if encoding is None and looks_binary(data[:8192]):
        raise LocomadError(f"{path}:1: no readable cue: binary data, not a text file")
    try:
        text, _ = decode_text(data, encoding)
    except LocomadError as e:
        raise LocomadError(f"{path}: {e}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- text cleanup -----------------------------------------------------------------------------

_ASS_TAG = re.compile(r"\{\\[^}]*\}")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>|<\d[^<>]*>")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Strip ASS override blocks, HTML/WebVTT tags and entities; one line, single spaces."""
    text = _ASS_TAG.sub("", text).replace("\\N", " ").replace("\\n", " ").replace("\\h", " ")
    text = _HTML_TAG.sub("", text)
    text = html.unescape(text)
    return _SPACES.sub(" ", text).strip()


# --- SRT / WebVTT -----------------------------------------------------------------------------

_TIMING = re.compile(
    r"^\s*(\d+:)?\d{1,2}:\d{1,2}[,.]\d{1,3}\s*-->\s*(\d+:)?\d{1,2}:\d{1,2}[,.]\d{1,3}(\s|$)"
)


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Split into (first line number, lines) blocks at blank lines, and also before a timing
    line that follows text without a blank line (a frequent SRT defect that would otherwise
    swallow the next cue into the previous one's text).

    Hand-written because neither pysrt nor webvtt-py reports where a block starts, and a
    skipped block must be reported as file:line.
    """
    blocks: list[tuple[int, list[str]]] = []
    cur: list[str] = []
    start = 0
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            if cur:
                blocks.append((start, cur))
            cur = []
            continue
        if cur and "-->" in line and _TIMING.match(line):
            has_timing = any(_TIMING.match(x) for x in cur)
            if has_timing:
                # the previous line may be the new cue's number or id
                carry = [cur.pop()] if len(cur) > 1 and "-->" not in cur[-1] else []
                if cur:
                    blocks.append((start, cur))
                cur, start = carry, n - len(carry)
        if not cur:
            start = n
        cur.append(line)
    if cur:
        blocks.append((start, cur))
    return blocks


def _srt_seconds(stamp: str) -> float:
    return check_seconds(pysrt.SubRipTime.from_string(stamp.strip()).ordinal / 1000.0)


def _parse_srt_block(lines: list[str]) -> Cue:
    item = pysrt.SubRipItem.from_lines(lines)  # index / timing / body split
    timing = next(x for x in lines if "-->" in x)
    if not _TIMING.match(timing):
        # pysrt turns unreadable digits into 0 without complaint; refuse instead
        raise ValueError(f"bad timing line {timing.strip()!r}")
    a, b = timing.split("-->", 1)
    return Cue(_srt_seconds(a), _srt_seconds(b.split()[0]), clean_text(item.text))


def _parse_vtt_block(lines: list[str]) -> Cue | None:
    if lines[0].startswith(("NOTE", "STYLE", "REGION")):
        return None
    vtt = webvtt.from_string("WEBVTT\n\n" + "\n".join(lines))
    if len(vtt.captions) != 1:
        raise ValueError("not a cue block")
    c = vtt.captions[0]
    return Cue(
        check_seconds(c.start_time.in_milliseconds() / 1000.0),
        check_seconds(c.end_time.in_milliseconds() / 1000.0),
        clean_text("\n".join(c.lines)),
    )


_OTHER_FORMATS = (
    ("[script info]", "ASS/SSA subtitles"),
    ("<?xml", "XML (TTML/DFXP?) subtitles"),
    ("<tt", "TTML subtitles"),
    ("{", "JSON"),
)


def _convert_command(source: Path) -> str:
    """An ffmpeg command converting `source` to SRT beside it, never onto itself (an ASS file
    named x.srt would otherwise be told `ffmpeg -i x.srt x.srt`)."""
    import shlex

    target = source.with_suffix(".srt")
    if target.name == source.name:
        target = source.with_name(f"{source.stem}.converted.srt")
    names = [source.name, target.name]
    names = [f"./{n}" if n.startswith("-") else n for n in names]
    return f"ffmpeg -n -i {shlex.quote(names[0])} {shlex.quote(names[1])}"


def _other_format(text: str) -> str | None:
    head = text.lstrip("\ufeff \t\n").lower()
    return next((what for start, what in _OTHER_FORMATS if head.startswith(start)), None)


def skipped_line(source: str, items: list[tuple[int, str]], one: str, many: str) -> str:
    """One warning line for every skipped item of one kind: `items` are (line, why)."""
    line, why = items[0]
    if len(items) == 1:
        return f"{source}:{line}: skipped {one}" + (f" ({why})" if why else "")
    return f"{source}: skipped {len(items)} {many}, first at line {line}" + (
        f" ({why})" if why else ""
    )


def _parse_blocks(text: str, source: str, vtt: bool) -> list[Cue]:
    """Every readable cue block in file order, times and cleaned text as written; malformed
    blocks are skipped and reported in one warning line (source:line of the first)."""
    other = _other_format(text)
    if other is not None:
        raise LocomadError(
            f"{source}:1: {other} are not read here; convert them to SRT first "
            f"(e.g. {_convert_command(Path(source))})"
            if other.endswith("subtitles")
            else f"{source}:1: no readable cue: {other}, not SRT or WebVTT"
        )
    blocks = _blocks(text.lstrip("\ufeff"))
    if vtt:
        if not blocks or not blocks[0][1][0].startswith("WEBVTT"):
            raise LocomadError(f"{source}:1: a WebVTT file starts with 'WEBVTT'")
        blocks = blocks[1:]
    cues: list[Cue] = []
    skipped: list[tuple[int, str]] = []
    for line_no, lines in blocks:
        try:
            cue = _parse_vtt_block(lines) if vtt else _parse_srt_block(lines)
        except (
            ValueError,
            OverflowError,
            StopIteration,
            pysrt.Error,
            MalformedCaptionError,
            MalformedFileError,
        ) as e:
            skipped.append((line_no, _why(e)))
            continue
        if cue is not None:
            cue.line = line_no
            cues.append(cue)
    if not cues:
        what = "SRT" if not vtt else "WebVTT"
        detail = (
            f"; {len(skipped)} malformed block(s), first at line {skipped[0][0]}" if skipped else ""
        )
        raise LocomadError(f"{source}:1: no readable cue (is it {what}?{detail})")
    if skipped:
        log.warning(skipped_line(source, skipped, "a malformed cue block", "malformed cue blocks"))
    return cues


def parse_subtitles(text: str, source: str = "<text>", vtt: bool | None = None) -> list[Cue]:
    """Parse SRT or WebVTT subtitles (WebVTT detected by its header unless `vtt` is given):
    cues without text or ending before they start are dropped, the rest sorted."""
    if vtt is None:
        vtt = text.lstrip("\ufeff").startswith("WEBVTT")
    cues = []
    inverted: list[tuple[int, str]] = []
    for cue in _parse_blocks(text, source, vtt):
        if cue.end <= cue.start:
            inverted.append((cue.line, ""))
        elif cue.text:
            cues.append(cue)
    if inverted:
        log.warning(
            skipped_line(
                source,
                inverted,
                "a cue that ends before it starts",
                "cues that end before they start",
            )
        )
    return sort_cues(cues)


def _why(e: Exception) -> str:
    msg = " ".join(str(e).split())[:120]
    return msg if msg else e.__class__.__name__


def sort_cues(cues: list[Cue]) -> list[Cue]:
    """Film order; the same text at the same time only once (files merged from two sources
    repeat cues). Overlapping cues are kept: overlapping dialogue is real, and slot proposal
    treats the union of all cues as dialogue."""
    out: list[Cue] = []
    seen: set[tuple[float, float, str]] = set()
    for c in sorted(cues, key=lambda c: (c.start, c.end)):
        key = (round(c.start, 3), round(c.end, 3), c.text)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def read_cues(path: str | Path, encoding: str | None = None) -> list[Cue]:
    """Read an SRT or WebVTT file in any common encoding: tags stripped, film order."""
    path = Path(path)
    text = read_text(path, encoding)
    vtt = path.suffix.lower() == ".vtt" or text.lstrip("\ufeff").startswith("WEBVTT")
    return parse_subtitles(text, str(path), vtt=vtt)


# --- CSV / JSON timed rows --------------------------------------------------------------------

_START_KEYS = ("start", "start_time", "start_s", "begin", "start_hms")
_END_KEYS = ("end", "end_time", "end_s", "stop", "end_hms")
_TEXT_KEYS = ("text", "sentence", "description", "ad", "caption")
_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d+)?)$")


def parse_time(value: Any) -> float:
    """Seconds from a number or a clock string ('HH:MM:SS.mmm', 'MM:SS,mmm', '12.5'); finite
    and of sane size (utils.check_seconds), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a time: {_short(value)}")
    if isinstance(value, (int, float)):
        return check_seconds(value)
    s = value.strip()
    if len(s) > 40:
        raise ValueError(f"not a time: {_short(s)} ({len(s)} characters)")
    m = _CLOCK.match(s)
    if m:
        h, mi, sec = m.groups()
        return check_seconds(int(h or 0) * 3600 + int(mi) * 60 + float(sec.replace(",", ".")))
    try:
        seconds = float(s)
    except ValueError:
        raise ValueError(f"not a time: {_short(value)}") from None
    return check_seconds(seconds)


def _short(value: Any) -> str:
    """A value for an error message: repr, cut to 40 characters (never a 400-digit line)."""
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    lower = {str(k).strip().lower(): v for k, v in row.items()}
    for k in keys:
        if k in lower and lower[k] not in (None, ""):
            return lower[k]
    return None


def _row_cue(row: dict[str, Any], where: str) -> Cue:
    start, end = _pick(row, _START_KEYS), _pick(row, _END_KEYS)
    stamps = row.get("timestamps")
    if start is None and isinstance(stamps, (list, tuple)):  # MAD-v1 annotations
        if len(stamps) != 2:
            raise LocomadError(f"{where}: 'timestamps' must be [start, end], got {len(stamps)}")
        start, end = stamps
    if start is None or end is None:
        raise LocomadError(f"{where}: needs a start and an end (columns start,end)")
    try:
        s, e = parse_time(start), parse_time(end)
    except ValueError as err:
        raise LocomadError(f"{where}: {err}") from None
    text = _pick(row, _TEXT_KEYS)
    if text is not None and not isinstance(text, (str, int, float)):
        raise LocomadError(f"{where}: the text must be a string, not {_short(text)}")
    return Cue(s, e, clean_text(str(text)) if text is not None else "")


def read_timed_rows(path: str | Path) -> list[Cue]:
    """Times (and optional texts) from CSV or JSON, in file order (callers check order).

    CSV: a header with start/end (seconds or clock strings) and optionally text/sentence.
    JSON: a list of such objects, `{"slots": [...]}` (our own output), or MAD-v1's
    `{id: {"timestamps": [s, e], "sentence": ...}}`.
    """
    path = Path(path)
    text = read_text(path).lstrip("\ufeff")
    cues: list[Cue] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LocomadError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise LocomadError(f"{path}: not a times file (JSON nested too deeply)") from None
        except ValueError as e:  # e.g. an integer of thousands of digits
            raise LocomadError(f"{path}: not valid JSON ({_why(e)})") from None
        if isinstance(data, dict) and isinstance(data.get("slots"), list):
            rows = data["slots"]
        elif isinstance(data, dict):
            rows = list(data.values())
        else:
            rows = data
        if not isinstance(rows, list):
            raise LocomadError(f"{path}: expected a list of {{start, end, text}} objects")
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise LocomadError(f"{path}: entry {i}: expected an object with start and end")
            cue = _row_cue(row, f"{path}: entry {i}")
            cue.line = i
            cues.append(cue)
        return cues
    reader = csv.DictReader(io.StringIO(text))
    try:
        if not reader.fieldnames:
            raise LocomadError(f"{path}:1: empty CSV (expected a header with start,end)")
        for row in reader:
            cue = _row_cue(row, f"{path}:{reader.line_num}")
            cue.line = reader.line_num
            cues.append(cue)
    except csv.Error as e:  # a field over csv's size limit, a stray NUL
        raise LocomadError(f"{path}:{reader.line_num}: not a readable CSV ({_why(e)})") from None
    return cues


def read_timed(path: str | Path) -> list[Cue]:
    """AD times or references from SRT, WebVTT, CSV or JSON (by extension)."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".json"):
        return read_timed_rows(path)
    text = read_text(path)
    vtt = path.suffix.lower() == ".vtt" or text.lstrip("\ufeff").startswith("WEBVTT")
    # file order, text-less and inverted cues kept: the caller checks times with file:line
    return _parse_blocks(text, str(path), vtt)
