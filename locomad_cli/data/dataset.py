"""What every dataset reader shares: annotations, lazy frame sources, row checks, the Dataset.

A reader (mad.py, lsmdc.py, folder.py) turns its files into `Annotation`s (one AD slot each,
with the file:line it came from) and a `FrameSource` that can slice a film's frames lazily.
`check_annotations` drops malformed rows with a report (or refuses them with `strict`), and
`ClipDataset` joins slots, their context proposals and cached text features into ClipRecords.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from locomad_cli.data.records import ClipRecord, ContextItem
from locomad_cli.tracks.readers import belongs, dialogue_windows
from locomad_cli.utils import LocomadError, check_seconds, readable

SPLITS = ("train", "val", "test")


@dataclass
class Annotation:
    """One AD slot: where it is in its film, its reference text and its subtitles."""

    film: str
    start: float
    end: float
    text: str
    source: str = ""
    """file:line the row came from, for reports."""
    subtitle: str = ""
    key: str = ""
    """Key of the frame features in the FrameSource (the film, or the clip for LSMDC)."""
    offset: float = 0.0
    """Film time of frame 0 of `key` (0 for whole films, the clip start for LSMDC)."""
    group: str = ""
    """Context scope: context items come only from the same group (a film, or an LSMDC set)."""

    def __post_init__(self) -> None:
        self.key = self.key or self.film
        self.group = self.group or self.film


class H5Frames:
    """Frame features in an HDF5 file, one dataset [T, D] per key (MAD's layout).

    The file is opened lazily and once per process (DataLoader workers each get their own
    handle: h5py handles must not cross a fork), and only the slot's rows are read."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self._file = None
        self._pid = -1
        self._keys: set[str] | None = None

    def _h5(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise LocomadError(f"{self.path}: cannot open as HDF5 ({e})") from None
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {"path": self.path, "fps": self.fps, "_file": None, "_pid": -1, "_keys": None}

    def keys(self) -> set[str]:
        if self._keys is None:
            self._keys = set(self._h5().keys())
        return self._keys

    def num_frames(self, key: str) -> int:
        return int(self._h5()[key].shape[0])

    def dim(self, key: str) -> int:
        return int(self._h5()[key].shape[1])

    def read(self, key: str, a: int, b: int) -> torch.Tensor:
        return torch.from_numpy(self._h5()[key][a:b]).float()


@contextlib.contextmanager
def _open_features(path: Path) -> Iterator[Any]:
    """safe_open() on a features file, its failures in one line: a file that is no
    safetensors file at all (safetensors' own error types, 'header too small') as
    load_features reports it; a file that cannot be opened as the OSError it is."""
    from safetensors import safe_open

    readable(path)
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as e:  # SafetensorError derives from Exception only
        raise LocomadError(
            f"{path}: not a features file ({' '.join(str(e).split())[:200]})"
        ) from None
    with handle as f:
        yield f


def features_metadata(path: Path) -> dict[str, str]:
    """The metadata of a features file (checked to be one)."""
    with _open_features(path) as f:
        return dict(f.metadata() or {})


class SafetensorsFrames:
    """Frame features in `*.features.safetensors` files (tensor `features` [T, D]), one file
    per key; rows are sliced from the memory-mapped file without reading the rest."""

    def __init__(self, files: dict[str, Path], fps: float) -> None:
        self.files = dict(files)
        self.fps = fps
        self._shapes: dict[str, tuple[int, int]] = {}

    def keys(self) -> set[str]:
        return set(self.files)

    def _shape(self, key: str) -> tuple[int, int]:
        if key not in self._shapes:
            path = self.files[key]
            with _open_features(path) as f:
                if "features" not in f.keys():
                    raise LocomadError(f"{path}: no tensor named 'features'")
                shape = f.get_slice("features").get_shape()
            if len(shape) != 2:
                raise LocomadError(f"{path}: 'features' must be [T, D], found {list(shape)}")
            self._shapes[key] = (int(shape[0]), int(shape[1]))
        return self._shapes[key]

    def num_frames(self, key: str) -> int:
        return self._shape(key)[0]

    def dim(self, key: str) -> int:
        return self._shape(key)[1]

    def read(self, key: str, a: int, b: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.files[key]), framework="pt") as f:
            return f.get_slice("features")[a:b].float()


FrameSource = H5Frames | SafetensorsFrames


def frame_range(ann: Annotation, fps: float, num_frames: int) -> tuple[int, int]:
    """Rows [a, b) of the slot in its feature key (at least one frame)."""
    a = max(0, math.floor((ann.start - ann.offset) * fps))
    b = min(num_frames, math.ceil((ann.end - ann.offset) * fps))
    return a, max(b, a + 1)


def parse_time(value: str) -> float:
    """Seconds from '12.5', '00:01:02.5' or '00:01:02,500' (a bare number is seconds);
    finite and of sane size (utils.check_seconds), else ValueError."""
    v = value.strip().replace(",", ".")
    if ":" in v:
        parts = [float(p) for p in v.split(":")]
        seconds = 0.0
        for p in parts:
            seconds = seconds * 60 + p
        return check_seconds(seconds)
    return check_seconds(float(v))


def check_annotations(
    anns: list[Annotation], frames: FrameSource, strict: bool = False
) -> tuple[list[Annotation], list[str]]:
    """Keep the usable slots; report the others as 'file:line: why'. With `strict`, the first
    problem is a LocomadError: a dataset with bad rows is refused rather than trained on."""
    keys = frames.keys()
    good: list[Annotation] = []
    problems: list[str] = []
    for ann in anns:
        why = None
        if not ann.text.strip():
            why = "empty description"
        elif not (math.isfinite(ann.start) and math.isfinite(ann.end)) or ann.end <= ann.start:
            why = f"end {ann.end:g} s is not after start {ann.start:g} s"
        elif ann.key not in keys:
            why = f"no frame features for '{ann.key}'"
        else:
            duration = frames.num_frames(ann.key) / frames.fps
            rel_start, rel_end = ann.start - ann.offset, ann.end - ann.offset
            # one frame of slack: annotation times are rounded differently than frame times
            if rel_start < -1.0 / frames.fps or rel_start >= duration:
                why = f"slot {ann.start:g}-{ann.end:g} s starts outside the film ({duration:g} s)"
            elif rel_end > duration + 1.0:
                why = f"slot {ann.start:g}-{ann.end:g} s ends outside the film ({duration:g} s)"
        if why is None:
            good.append(ann)
            continue
        problem = f"{ann.source or ann.film}: {why}"
        if strict:
            raise LocomadError(f"{problem} (drop --strict to skip malformed rows)")
        problems.append(problem)
    return good, problems


def report_problems(problems: list[str], limit: int = 10) -> None:
    """Print skipped rows on stderr (a few, then a count): never silently dropped."""
    for p in problems[:limit]:
        print(f"locomad: skipped {p}", file=sys.stderr)
    if len(problems) > limit:
        print(f"locomad: ... and {len(problems) - limit} more malformed rows", file=sys.stderr)


class SubtitleIndex:
    """Subtitle cues of one film, sorted, for 'what is said during this slot' lookups."""

    def __init__(self, cues: list[tuple[float, float, str]]) -> None:
        self.cues = sorted(cues)
        self.starts = [c[0] for c in self.cues]
        self.longest = max((c[1] - c[0] for c in self.cues), default=0.0)

    def dialogue(self, begin: float, start: float, end: float) -> str:
        """The lines that go with the slot [start, end] (subtitles.belongs)."""
        # only cues starting in [min(begin, start - longest cue), end) can qualify: a window
        lo = bisect.bisect_left(self.starts, min(begin, start - self.longest))
        hi = bisect.bisect_left(self.starts, end)
        texts = [c[2] for c in self.cues[lo:hi] if belongs(c[0], c[1], begin, start, end)]
        return " ".join(t.strip() for t in texts if t.strip())


def attach_subtitles(anns: list[Annotation], subs: dict[str, SubtitleIndex]) -> None:
    """Set each slot's subtitle to the dialogue that goes with it: the cues since the film's
    previous slot ended up to this slot's end (subtitles.dialogue_windows), the same rule
    `describe` applies."""
    by_film: dict[str, list[Annotation]] = {}
    for ann in anns:
        by_film.setdefault(ann.film, []).append(ann)
    for film, film_anns in by_film.items():
        index = subs.get(film)
        if index is None:
            continue
        film_anns.sort(key=lambda a: (a.start, a.end))
        begins = dialogue_windows([(a.start, a.end) for a in film_anns])
        for ann, begin in zip(film_anns, begins, strict=True):
            ann.subtitle = index.dialogue(begin, ann.start, ann.end)


@dataclass
class DatasetSplit:
    """The checked slots of one split, their frame source, and what was skipped."""

    name: str
    annotations: list[Annotation]
    frames: FrameSource
    skipped: list[str] = field(default_factory=list)
    max_context: int | None = None
    """Upper bound on the context proposal (LSMDC sets are five clips: 4 earlier ones)."""


class ClipDataset(torch.utils.data.Dataset):
    """Slots → ClipRecords: frames sliced on access, context proposals and their text
    features precomputed once (see context.py and textcache.py)."""

    def __init__(
        self,
        split: DatasetSplit,
        contexts: list[list[int]],
        text_features: torch.Tensor,
        text_rows: list[int],
    ) -> None:
        self.split = split
        self.anns = split.annotations
        self.frames = split.frames
        self.contexts = contexts
        self.text_features = text_features
        self.text_rows = text_rows

    def __len__(self) -> int:
        return len(self.anns)

    def __getitem__(self, i: int) -> ClipRecord:
        ann = self.anns[i]
        a, b = frame_range(ann, self.frames.fps, self.frames.num_frames(ann.key))
        ctx_ids = self.contexts[i]
        context = [
            ContextItem(
                text=self.anns[j].text,
                subtitle=self.anns[j].subtitle,
                start=self.anns[j].start,
                end=self.anns[j].end,
            )
            for j in ctx_ids
        ]
        ctx_feats = None
        if ctx_ids:
            ctx_feats = self.text_features[[self.text_rows[j] for j in ctx_ids]].float()
        return ClipRecord(
            film=ann.film,
            start=ann.start,
            end=ann.end,
            features=self.frames.read(ann.key, a, b),
            text=ann.text,
            subtitle=ann.subtitle,
            context=context,
            context_features=ctx_feats,
            index=i,
            source=ann.source,
        )


def read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV/TSV with a header: (columns, [(line, row)]), delimiter sniffed from the header."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    except OSError as e:
        raise LocomadError(f"{path}: cannot read ({e.strerror or e})") from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise LocomadError(f"{path}: empty file") from None
    columns = [h.strip() for h in header]
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        rows.append((reader.line_num, dict(zip(columns, values, strict=False))))
    return columns, rows


def find_column(columns: list[str], role: str, aliases: tuple[str, ...], path: Path) -> str:
    """The first column whose normalised name is one of `aliases` (in preference order)."""
    norm = {c.strip().lower().replace(" ", "_").replace("-", "_"): c for c in columns}
    for alias in aliases:
        if alias in norm:
            return norm[alias]
    found = ", ".join(c for c in columns if c) or "none"
    raise LocomadError(
        f"{path}: no {role} column (looked for {', '.join(aliases)}); columns found: {found}"
    )
