"""`locomad demo make-data`: render demo films into the folder-of-films layout.

Per film NAME in `train/`, `val/` and `test/`: NAME.mp4 (H.264), NAME.srt (dialogue),
NAME.ad.srt (reference AD, one cue per AD slot), NAME.world.json (the script: cast, looks,
slots with their look-only captions, for CLIP training and name scoring) and, unless skipped,
NAME.features.safetensors from `locomad_cli.features.extract` with the demo card's CLIP.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pysrt

from locomad_cli.demo.render import encode_mp4, film_frames, film_soundtrack
from locomad_cli.demo.world import LOCATIONS, NAMES, Film, make_plot
from locomad_cli.train.bounds import MAX_SEED, WHOLE, Bound, check_fields
from locomad_cli.utils import LocomadError, atomic_open, atomic_path, check_writable_dir

SPLITS = ("train", "val", "test")


@dataclass
class DemoDataConfig:
    seed: int = 0
    films: int = 60
    val: int = 6
    test: int = 6
    fps: float = 10.0
    """Frame rate of the rendered MP4s (features are sampled at the card's FPS)."""
    cast: int = 3
    scenes: int = 3
    window: int = 8
    """Every name an AD uses is (re)introduced within this many earlier AD items."""
    dialogue_intro: float = 1.0
    """Chance that a newcomer is named by a line of dialogue right after their entrance
    ("Hello, Tom.") instead of by the AD, as films do: then the recurrent model can know a
    name from the subtitles (a slot's dialogue is the lines since the previous slot) and
    keep it through its own context, which it cannot when only the AD names people."""
    extra_train: int = 0
    """More training films, made after the held-out ones (films `films` … `films +
    extra_train - 1`), so a larger training set keeps the same validation and test films."""

    def check(self) -> None:
        """Refuse, in one line naming the flag, a setting out of range before anything is
        written: a NaN frame rate or a negative seed would fail mid-render, a billion frames
        per second or films would run for ever."""
        if isinstance(self.extra_train, int) and self.extra_train < 0:
            raise LocomadError(f"--extra-films must be 0 or more, got {self.extra_train}")
        check_fields(self, DEMO_BOUNDS, flags={"extra_train": "--extra-films"})
        if self.val + self.test >= self.films:
            raise LocomadError(
                f"--films {self.films} must exceed --val {self.val} + --test {self.test} (at "
                "least one training film)"
            )


MAX_FILMS = 10_000
"""More demo films than this would render for days; the paper's demo uses 60."""
DEMO_BOUNDS: dict[str, Bound] = {
    "seed": Bound(0, MAX_SEED, what=WHOLE),
    "films": Bound(1, MAX_FILMS, what=WHOLE),
    "val": Bound(0, MAX_FILMS, what=WHOLE),
    "test": Bound(0, MAX_FILMS, what=WHOLE),
    "fps": Bound(1.0, 60.0),
    "cast": Bound(1, 4, what=WHOLE),
    "scenes": Bound(1, len(LOCATIONS), what=WHOLE),
    "window": Bound(1, 1000, what=WHOLE),
    "dialogue_intro": Bound(0.0, 1.0, what="a chance"),
    "extra_train": Bound(0, MAX_FILMS, what=WHOLE),
}
"""The range of every numeric DemoDataConfig field (fps: of the rendered MP4s)."""


def film_split(i: int, cfg: DemoDataConfig) -> str:
    """The last `test` of the first `films` films are held out, the `val` before them
    validate; the extra training films come after them."""
    if i >= cfg.films:
        return "train"
    if i >= cfg.films - cfg.test:
        return "test"
    if i >= cfg.films - cfg.test - cfg.val:
        return "val"
    return "train"


def film_name(i: int) -> str:
    return f"film{i:04d}"


def make_film(i: int, cfg: DemoDataConfig) -> Film:
    """Film i of a data set: its own generator seeded by (seed, i), so a film does not
    depend on how many others are made."""
    rng = np.random.default_rng([cfg.seed, i])
    return make_plot(
        rng,
        film_name(i),
        cfg.seed,
        n_cast=cfg.cast,
        scenes=cfg.scenes,
        window=cfg.window,
        dialogue_intro=cfg.dialogue_intro,
    )


def _srt_time(t: float) -> pysrt.SubRipTime:
    return pysrt.SubRipTime.from_ordinal(int(round(t * 1000)))


def write_srt(cues: list[tuple[float, float, str]], path: Path) -> Path:
    srt = pysrt.SubRipFile()
    for n, (start, end, text) in enumerate(cues, 1):
        srt.append(pysrt.SubRipItem(n, _srt_time(start), _srt_time(end), text))
    with atomic_path(path) as tmp:
        srt.save(str(tmp), encoding="utf-8")
    return path


def world_json(film: Film) -> dict:
    return {
        "name": film.name,
        "seed": film.seed,
        "duration": film.duration,
        "cast": [{"name": c.name, "look": c.look.phrase} for c in film.cast],
        "slots": [
            {
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "caption": s.caption,
                "names": s.names,
                "binds": s.binds,
                "action": asdict(s.action),
            }
            for s in film.slots
        ],
        "lines": [asdict(ln) for ln in film.lines],
    }


def write_film(film: Film, folder: Path, fps: float) -> Path:
    """Render and write one film's files; returns the MP4 path."""
    folder.mkdir(parents=True, exist_ok=True)
    mp4 = encode_mp4(
        film_frames(film, fps), fps, folder / f"{film.name}.mp4", sound=film_soundtrack(film, fps)
    )
    write_srt([(ln.start, ln.end, ln.text) for ln in film.lines], folder / f"{film.name}.srt")
    write_srt([(s.start, s.end, s.text) for s in film.slots], folder / f"{film.name}.ad.srt")
    with atomic_open(folder / f"{film.name}.world.json") as f:
        json.dump(world_json(film), f, indent=1)
    return mp4


def make_data(
    out_dir: str | Path,
    cfg: DemoDataConfig | None = None,
    features: bool = True,
    card: str = "demo",
    progress: bool = False,
    threads: int | None = None,
) -> dict[str, list[Path]]:
    """Render `cfg.films` + `cfg.extra_train` films into OUT_DIR/{train,val,test}/ and
    (optionally) extract their frame features with the card's CLIP (`threads`: torch's, see
    extract_features). Returns the MP4 paths per split."""
    cfg = cfg or DemoDataConfig()
    cfg.check()
    root = check_writable_dir(out_dir)
    write_names(root / NAMES_FILE)
    out: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for i in range(cfg.films + cfg.extra_train):
        split = film_split(i, cfg)
        film = make_film(i, cfg)
        out[split].append(write_film(film, root / split, cfg.fps))
        if progress:
            print(
                f"{split}/{film.name}: {len(film.slots)} AD slots, {film.duration:.0f} s",
                flush=True,
            )
    if features:
        extract_demo_features(root, card, threads=threads)
    return out


NAMES_FILE = "names.txt"
"""The world's pool of character names, one per line: `locomad train --rename-names` reads it."""


def write_names(path: Path) -> None:
    with atomic_open(path, "w") as f:
        f.write("".join(n + "\n" for n in NAMES))


def extract_demo_features(
    root: str | Path, card: str = "demo", overwrite: bool = False, threads: int | None = None
) -> int:
    """Frame features for every MP4 under root/{train,val,test} with `card`'s CLIP (skips
    films already done unless `overwrite`); returns how many films have features."""
    from locomad_cli.card import load_card
    from locomad_cli.features.extract import extract_features

    model_card = load_card(card)
    videos = sorted(p for s in SPLITS for p in (Path(root) / s).glob("*.mp4"))
    if not videos:
        raise LocomadError(f"{root}: no demo films (run `locomad demo make-data` first)")
    done = 0
    for split in SPLITS:
        vids = [v for v in videos if v.parent.name == split]
        if vids:
            done += len(
                extract_features(
                    vids,
                    model_card,
                    out_dir=Path(root) / split,
                    device="cpu",
                    dtype="fp32",
                    overwrite=overwrite,
                    threads=threads,
                )
            )
    return done
