"""MAD (Soldelli et al.) as distributed, with the MAD-v2 / AutoAD annotations.

What is read from ROOT (any of these can be pointed at with `mad:ROOT?key=PATH`):
- `features`: `CLIP_L14_frames_features_5fps.h5` (or another `*frames_features*.h5`): one
  dataset per film id, [T, 768] CLIP ViT-L/14 embeddings at the FPS in the file name. Read
  lazily: only a slot's rows are ever loaded.
- `ad`: the AD annotation CSV. `mad-v2-ad-unnamed.csv` by default, `?ad=named` for the named
  one, `?ad=v1` for MAD-v1's `MAD_{train,val,test}.json`, or a path. Column names vary between
  releases: the film, text, start and end columns are detected (movie|movie_id|film|video…,
  sentence|text|caption…, start|start_time…, end|end_time…); times are seconds or HH:MM:SS.
- `subs`: the subtitle CSV (`*subs*.csv`), same detection; optional.
- `split`: AutoAD's split file (`*split*.json|csv`): {"train": [...], "eval": [...]} (any case),
  {film: split} or a CSV with movie and split columns. EVAL films are the test split and,
  when the file has no val list, the validation split too. Without a split file, a `split`
  column in the AD CSV is used; failing that every film is training data and val/test are
  refused. MAD-v1 JSON files carry their split in their names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from locomad_cli.data.dataset import (
    Annotation,
    DatasetSplit,
    H5Frames,
    SubtitleIndex,
    attach_subtitles,
    find_column,
    parse_time,
    read_csv_rows,
)
from locomad_cli.utils import LocomadError, check_seconds

FILM_COLUMNS = ("movie", "movie_id", "movie_name", "film", "film_id", "video", "video_id", "vid")
AD_TEXT_COLUMNS = ("sentence", "text", "ad", "caption", "description", "ad_text")
SUB_TEXT_COLUMNS = ("text", "subtitle", "subtitles", "sub", "sentence", "caption")
START_COLUMNS = ("start", "start_time", "start_s", "start_sec", "begin", "start_hms")
END_COLUMNS = ("end", "end_time", "end_s", "end_sec", "stop", "end_hms")
SPLIT_COLUMNS = ("split", "subset", "set")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "eval": "test",
    "evaluation": "test",
}


def _film_id(value: object) -> str:
    """Film ids as strings ('1004', not '1004.0'), matching the HDF5 keys."""
    s = str(value).strip()
    return s[:-2] if re.fullmatch(r"\d+\.0", s) else s


def _glob_one(root: Path, patterns: tuple[str, ...], what: str, required: bool = True):
    for pattern in patterns:
        found = sorted(root.rglob(pattern))
        if found:
            return found[0]
    if required:
        raise LocomadError(f"{root}: no {what} found (looked for {', '.join(patterns)})")
    return None


def read_timed_csv(
    path: Path, text_columns: tuple[str, ...], what: str
) -> tuple[list[Annotation], list[str], dict[str, str]]:
    """Rows of an AD or subtitle CSV as Annotations (+ problems, + film → split if the CSV
    has a split column)."""
    columns, rows = read_csv_rows(path)
    film_c = find_column(columns, "film", FILM_COLUMNS, path)
    text_c = find_column(columns, f"{what} text", text_columns, path)
    start_c = find_column(columns, "start time", START_COLUMNS, path)
    end_c = find_column(columns, "end time", END_COLUMNS, path)
    split_c = None
    try:
        split_c = find_column(columns, "split", SPLIT_COLUMNS, path)
    except LocomadError:
        pass
    anns, problems, splits = [], [], {}
    for line, row in rows:
        where = f"{path}:{line}"
        try:
            start, end = parse_time(row.get(start_c) or ""), parse_time(row.get(end_c) or "")
        except ValueError:
            problems.append(f"{where}: start/end '{row.get(start_c)}'/'{row.get(end_c)}' not times")
            continue
        film = _film_id(row.get(film_c) or "")
        anns.append(Annotation(film, start, end, (row.get(text_c) or "").strip(), where))
        if split_c and (row.get(split_c) or "").strip().lower() in SPLIT_NAMES:
            splits[film] = SPLIT_NAMES[row[split_c].strip().lower()]
    return anns, problems, splits


def read_v1_json(path: Path) -> list[Annotation]:
    """MAD-v1: {annotation id: {movie, movie_duration, timestamps: [s, e], sentence}}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise LocomadError(
            f"{path}: not a MAD-v1 JSON file ({' '.join(str(e).split())[:200]})"
        ) from None
    if not isinstance(data, dict):
        raise LocomadError(f"{path}: expected {{annotation id: {{movie, timestamps, ...}}}}")
    anns = []
    for ann_id, item in data.items():
        where = f"{path}:{ann_id}"
        try:
            start, end = (check_seconds(t) for t in item["timestamps"])
            if not isinstance(item["sentence"], str):
                raise TypeError("sentence is not a string")
            anns.append(Annotation(_film_id(item["movie"]), start, end, item["sentence"], where))
        except (KeyError, TypeError, ValueError):
            keys = ", ".join(item) if isinstance(item, dict) else type(item).__name__
            raise LocomadError(
                f"{where}: expected movie, timestamps [s, e] and sentence; found {keys}"
            ) from None
    return anns


def read_split_file(path: Path) -> dict[str, str]:
    """Film id → train|val|test from AutoAD-style split files (see module docstring)."""
    if path.suffix.lower() == ".csv":
        columns, rows = read_csv_rows(path)
        film_c = find_column(columns, "film", FILM_COLUMNS, path)
        split_c = find_column(columns, "split", SPLIT_COLUMNS, path)
        data: object = {_film_id(r[film_c]): r[split_c] for _, r in rows}
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise LocomadError(
                f"{path}: not a JSON split file ({' '.join(str(e).split())[:200]})"
            ) from None
    if not isinstance(data, dict):
        raise LocomadError(f"{path}: a split file maps split → films or film → split")
    lists = {k: v for k, v in data.items() if isinstance(v, list)}
    films: dict[str, str] = {}
    if lists:
        names = {str(k).strip().lower(): v for k, v in lists.items()}
        known = [k for k in names if k in SPLIT_NAMES]
        if not known:
            raise LocomadError(
                f"{path}: no train/val/eval/test lists; keys found: {', '.join(map(str, data))}"
            )
        for name in known:
            for film in names[name]:
                films[_film_id(film)] = SPLIT_NAMES[name]
        if not any(k in names for k in ("val", "valid", "validation")):
            # AutoAD has TRAIN and EVAL only: EVAL doubles as the validation split.
            for film, split in list(films.items()):
                if split == "test":
                    films[film] = "test+val"
        return films
    for film, split in data.items():
        s = str(split).strip().lower()
        if s not in SPLIT_NAMES:
            raise LocomadError(f"{path}: film {film}: unknown split '{split}'")
        films[_film_id(film)] = SPLIT_NAMES[s]
    return films


def _in_split(film_split: str, split: str) -> bool:
    return split in film_split.split("+")


def read_mad(root: str | Path, split: str, fps: float, options: dict[str, str]) -> DatasetSplit:
    """The slots of one split of MAD (unchecked: see dataset.check_annotations)."""
    root = Path(root)
    if not root.is_dir():
        raise LocomadError(f"MAD root {root} is not a folder")
    feat = options.get("features")
    feat_path = (
        Path(feat)
        if feat
        else _glob_one(
            root, ("CLIP_L14_frames_features_5fps.h5", "*frames_features*.h5"), "frame features"
        )
    )
    m = re.search(r"(\d+(?:\.\d+)?)fps", feat_path.name)
    file_fps = float(m.group(1)) if m else 5.0
    if abs(file_fps - fps) > 1e-6:
        raise LocomadError(f"{feat_path} holds {file_fps:g} FPS features; the card wants {fps:g}")
    frames = H5Frames(feat_path, fps)

    ad = options.get("ad", "unnamed")
    problems: list[str] = []
    csv_splits: dict[str, str] = {}
    if ad == "v1":
        path = _glob_one(root, (f"MAD_{split}.json", f"*{split}*.json"), f"MAD-v1 {split} JSON")
        anns = read_v1_json(path)
        return DatasetSplit(split, anns, frames, problems)
    if ad in ("named", "unnamed"):
        found = [
            p
            for p in sorted(root.rglob("*named*.csv"))
            if ("unnamed" in p.name) == (ad == "unnamed")
        ]
        if not found:
            raise LocomadError(
                f"{root}: no {ad} AD annotation CSV (*{ad}*.csv, e.g. mad-v2-ad-{ad}.csv)"
            )
        ad_path = found[0]
    else:
        ad_path = Path(ad)
    anns, problems, csv_splits = read_timed_csv(ad_path, AD_TEXT_COLUMNS, "AD")

    split_opt = options.get("split")
    split_path = (
        Path(split_opt)
        if split_opt
        else _glob_one(root, ("*split*.json", "*split*.csv"), "split file", required=False)
    )
    film_splits = read_split_file(split_path) if split_path else csv_splits
    if film_splits:
        anns = [a for a in anns if _in_split(film_splits.get(a.film, ""), split)]
    elif split != "train":
        raise LocomadError(
            f"{root}: no split file (AutoAD's *split*.json) and no split column in {ad_path.name}:"
            f" cannot tell which films are '{split}' (pass mad:ROOT?split=FILE)"
        )

    subs = options.get("subs")
    subs_path = (
        Path(subs)
        if subs
        else _glob_one(root, ("*subs*.csv", "*subtitle*.csv"), "subtitles", required=False)
    )
    if subs_path:
        cues, sub_problems, _ = read_timed_csv(subs_path, SUB_TEXT_COLUMNS, "subtitle")
        films = {a.film for a in anns}
        by_film: dict[str, list[tuple[float, float, str]]] = {}
        for c in cues:
            if c.film in films:
                by_film.setdefault(c.film, []).append((c.start, c.end, c.text))
        attach_subtitles(anns, {f: SubtitleIndex(v) for f, v in by_film.items()})
        problems += sub_problems
    return DatasetSplit(split, anns, frames, problems)
