"""LSMDC multi-sentence description (LSMDC 2019 task): sets of five consecutive clips.

Annotations are the challenge's tab-separated files, one clip per line, no header:
    CLIP_ID  START_ALIGNED  END_ALIGNED  START_EXTRACTED  END_EXTRACTED  SENTENCE
with CLIP_ID = `<movie>_<HH.MM.SS.mmm>-<HH.MM.SS.mmm>` (e.g. `0001_American_Beauty_00.00.51.926-
00.00.54.129`): the movie and the clip's place in it come from the id. The split is read from
the file name (`*train*`, `*val*`, `*test*`/`*publictect*`; blind-test files have no sentences
and are not used); when `*_someone.csv` versions exist (character names replaced by SOMEONE,
the multi-sentence task's files) they are preferred, `lsmdc:ROOT?names=1` keeps the names.

Consecutive clips of a movie are cut into sets of five in file order (the task's unit); a
clip's context proposal is the earlier clips of its own set, so the context range is 5.

LSMDC ships videos, not features: extract them per clip with `locomad extract-features`
into ROOT (any depth) as `<CLIP_ID>.features.safetensors`, or give one HDF5 keyed by clip id
(`lsmdc:ROOT?features=FILE.h5`, or any `*.h5` in ROOT).
"""

from __future__ import annotations

import re
from pathlib import Path

from locomad_cli.data.dataset import Annotation, DatasetSplit, H5Frames, SafetensorsFrames
from locomad_cli.utils import LocomadError

SET_SIZE = 5
CLIP_ID = re.compile(
    r"^(?P<movie>.+)_(?P<start>\d+\.\d\d\.\d\d\.\d+)-(?P<end>\d+\.\d\d\.\d\d\.\d+)$"
)


def clip_time(stamp: str) -> float:
    """'00.01.02.500' → 62.5 seconds."""
    h, m, s, ms = stamp.split(".")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 10 ** len(ms)


def split_of(path: Path) -> str | None:
    name = path.name.lower()
    if "blind" in name:
        return None
    for key, split in (
        ("train", "train"),
        ("val", "val"),
        ("test", "test"),
        ("publictect", "test"),
    ):
        if key in name:
            return split
    return None


def annotation_files(root: Path, split: str, keep_names: bool) -> list[Path]:
    files = [
        p for p in sorted(root.rglob("*.csv")) if split_of(p) == split and "lsmdc" in p.name.lower()
    ]
    someone = [p for p in files if "someone" in p.name.lower()]
    if someone and not keep_names:
        return someone
    return [p for p in files if "someone" not in p.name.lower()] or files


def read_annotation_file(path: Path) -> tuple[list[Annotation], list[str]]:
    """One LSMDC annotation file → annotations grouped into five-clip sets (+ problems)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise LocomadError(f"{path}: cannot read ({e.strerror or e})") from None
    anns: list[Annotation] = []
    problems: list[str] = []
    set_of: dict[str, tuple[int, int]] = {}  # movie → (set number, clips in it so far)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        cols = line.rstrip("\r\n").split("\t")
        m = CLIP_ID.match(cols[0].strip())
        if len(cols) < 6 or not m:
            problems.append(
                f"{where}: expected CLIP_ID<tab>4 times<tab>SENTENCE with CLIP_ID = "
                f"movie_HH.MM.SS.mmm-HH.MM.SS.mmm, found {len(cols)} column(s)"
            )
            continue
        movie = m.group("movie")
        number, count = set_of.get(movie, (0, 0))
        if count == SET_SIZE:
            number, count = number + 1, 0
        set_of[movie] = (number, count + 1)
        start, end = clip_time(m.group("start")), clip_time(m.group("end"))
        anns.append(
            Annotation(
                film=movie,
                start=start,
                end=end,
                text="\t".join(cols[5:]).strip(),
                source=where,
                key=cols[0].strip(),
                offset=start,
                group=f"{movie}#{number}",
            )
        )
    return anns, problems


def read_lsmdc(root: str | Path, split: str, fps: float, options: dict[str, str]) -> DatasetSplit:
    root = Path(root)
    if not root.is_dir():
        raise LocomadError(f"LSMDC root {root} is not a folder")
    files = annotation_files(root, split, keep_names=options.get("names", "") in ("1", "true"))
    if not files:
        raise LocomadError(
            f"{root}: no LSMDC annotation file for split '{split}' "
            "(e.g. LSMDC16_annos_training_someone.csv, LSMDC16_annos_val_someone.csv)"
        )
    anns: list[Annotation] = []
    problems: list[str] = []
    for path in files:
        a, p = read_annotation_file(path)
        anns += a
        problems += p
    feat = options.get("features")
    h5 = [Path(feat)] if feat else sorted(root.rglob("*.h5"))
    if h5 and h5[0].suffix == ".h5":
        frames: H5Frames | SafetensorsFrames = H5Frames(h5[0], fps)
    else:
        base = Path(feat) if feat else root
        files_by_clip = {
            p.name[: -len(".features.safetensors")]: p for p in base.rglob("*.features.safetensors")
        }
        if not files_by_clip:
            raise LocomadError(
                f"{base}: no clip features (<CLIP_ID>.features.safetensors or an .h5 keyed by "
                "clip id); run `locomad extract-features` on the LSMDC clips"
            )
        frames = SafetensorsFrames(files_by_clip, fps)
    return DatasetSplit(split, anns, frames, problems, max_context=SET_SIZE - 1)
