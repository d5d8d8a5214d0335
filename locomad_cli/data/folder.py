"""A folder of films: the layout users make themselves (and the demo data's).

Per film NAME, side by side:
- `NAME.features.safetensors`: tensor `features` [T, D] from `locomad extract-features`
  (metadata `fps` must match the card);
- `NAME.ad.srt`, `NAME.ad.vtt` or `NAME.ad.csv` (columns start, end, text — detected like
  MAD's): the reference AD, one cue per AD slot; films without one are skipped for training;
- `NAME.srt` or `NAME.vtt`: the film's subtitles (optional).
Splits: sub-folders `train/`, `val/`, `test/` holding such files, or a `splits.json`
({"train": [NAME, ...], "val": [...], "test": [...]}) beside them; with neither, every film
is training data and asking for val/test is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from locomad_cli.data.dataset import (
    Annotation,
    DatasetSplit,
    SafetensorsFrames,
    SubtitleIndex,
    attach_subtitles,
    features_metadata,
    find_column,
    parse_time,
    read_csv_rows,
)
from locomad_cli.data.mad import END_COLUMNS, START_COLUMNS
from locomad_cli.utils import LocomadError

SUFFIX = ".features.safetensors"
TEXT_COLUMNS = ("text", "description", "ad", "sentence", "caption")


def film_files(folder: Path) -> dict[str, Path]:
    return {p.name[: -len(SUFFIX)]: p for p in sorted(folder.glob(f"*{SUFFIX}"))}


def _read_cues(path: Path) -> list[tuple[float, float, str, str]]:
    """(start, end, text, where) from an SRT/VTT file."""
    from locomad_cli.tracks.readers import read_cues

    cues = read_cues(path)
    return [
        (c.start, c.end, c.text, f"{path}:{c.line or f'cue {i}'}") for i, c in enumerate(cues, 1)
    ]


def _read_ad_csv(path: Path) -> tuple[list[tuple[float, float, str, str]], list[str]]:
    columns, rows = read_csv_rows(path)
    start_c = find_column(columns, "start time", START_COLUMNS, path)
    end_c = find_column(columns, "end time", END_COLUMNS, path)
    text_c = find_column(columns, "text", TEXT_COLUMNS, path)
    out, problems = [], []
    for line, row in rows:
        try:
            start, end = parse_time(row.get(start_c) or ""), parse_time(row.get(end_c) or "")
        except ValueError:
            problems.append(f"{path}:{line}: start/end are not times")
            continue
        out.append((start, end, (row.get(text_c) or "").strip(), f"{path}:{line}"))
    return out, problems


def reference_ad(folder: Path, name: str) -> Path | None:
    for ext in (".ad.srt", ".ad.vtt", ".ad.csv"):
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    return None


def subtitles_file(folder: Path, name: str) -> Path | None:
    for ext in (".srt", ".vtt"):
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    return None


def _split_names(path: Path, split: str) -> list[str]:
    """The film names `splits.json` lists for `split` ([] when it lists none)."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:  # '[[[[...' deeper than Python's parser goes
        raise LocomadError(f"{path}: not JSON this reader takes (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise LocomadError(f"{path}: not JSON ({' '.join(str(e).split())[:120]})") from None
    names = table.get(split, []) if isinstance(table, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise LocomadError(f"{path}: expected {{split: [film names]}}")
    return names


def split_films(root: Path, split: str) -> dict[str, Path]:
    """NAME → features file of the films in `split`."""
    if (root / split).is_dir():
        return film_files(root / split)
    if any((root / s).is_dir() for s in ("train", "val", "test")):
        raise LocomadError(f"{root}: no '{split}/' sub-folder")
    films = film_files(root)
    splits_path = root / "splits.json"
    if splits_path.is_file():
        names = _split_names(splits_path, split)
        unknown = [n for n in names if n not in films]
        if unknown:
            raise LocomadError(f"{splits_path}: no {SUFFIX} for {', '.join(unknown)}")
        return {n: films[n] for n in names}
    if split != "train":
        raise LocomadError(
            f"{root}: no '{split}' split (make {split}/ and train/ sub-folders or a splits.json)"
        )
    return films


def _check_fps(path: Path, meta: dict[str, str], fps: float) -> None:
    """Features sampled at the card's frame rate (files without an `fps` note pass)."""
    if "fps" not in meta:
        return
    try:
        found = float(meta["fps"])
    except ValueError:
        raise LocomadError(f"{path}: metadata fps={meta['fps'][:40]!r} is not a number") from None
    if not abs(found - fps) <= 1e-6:  # NaN included
        raise LocomadError(
            f"{path}: features at {found:g} FPS, the card wants {fps:g} "
            "(re-run extract-features with this card)"
        )


def read_folder(root: str | Path, split: str, fps: float, options: dict[str, str]) -> DatasetSplit:
    root = Path(root)
    if not root.is_dir():
        raise LocomadError(f"film folder {root} is not a folder")
    films = split_films(root, split)
    if not films:
        raise LocomadError(f"{root}: no *{SUFFIX} files for split '{split}'")
    anns: list[Annotation] = []
    problems: list[str] = []
    subs: dict[str, SubtitleIndex] = {}
    for name, feat_path in films.items():
        _check_fps(feat_path, features_metadata(feat_path), fps)
        folder = feat_path.parent
        ad_path = reference_ad(folder, name)
        if ad_path is None:
            problems.append(f"{feat_path}: no reference AD ({name}.ad.srt|vtt|csv), film skipped")
            continue
        if ad_path.suffix == ".csv":
            rows, bad = _read_ad_csv(ad_path)
            problems += bad
        else:
            rows = _read_cues(ad_path)
        anns += [Annotation(name, s, e, t, where) for s, e, t, where in rows]
        sub_path = subtitles_file(folder, name)
        if sub_path is not None:
            subs[name] = SubtitleIndex([(s, e, t) for s, e, t, _ in _read_cues(sub_path)])
    attach_subtitles(anns, subs)
    return DatasetSplit(split, anns, SafetensorsFrames(films, fps), problems)
