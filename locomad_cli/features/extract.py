"""Frame features for a film: decode at the card's FPS, encode with CLIP, save safetensors.

Layout: `<stem>.features.safetensors` holds `features` [T, D] (fp16) and string metadata; frame i
is what is on screen at i / fps seconds (see video.py). While a film runs, finished chunks sit in
`<stem>.features.partial/` (each written atomically), so a killed run continues from the last
finished chunk; the final file appears in one rename, and the partial folder goes.

Decoding runs in background threads, one decord reader per core over spans of the film
(parallel.py), feeding a small bounded queue: decoding overlaps encoding, and at most a few chunks
of frames are ever in memory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from locomad_cli.card import ModelCard
from locomad_cli.features import parallel
from locomad_cli.features.cache import FilmCache, open_partial
from locomad_cli.features.clip import ClipEncoder, input_side, load_clip, weights_id
from locomad_cli.features.video import FramePlan, VideoInfo, plan_frames, probe
from locomad_cli.films import rank_and_world, share
from locomad_cli.lock import lock_path, output_lock
from locomad_cli.progress import progress_bar
from locomad_cli.threads import torch_threads
from locomad_cli.utils import (
    LocomadError,
    atomic_path,
    check_writable_dir,
    readable,
    resolve_device,
    resolve_dtype,
    write_errors,
)

if TYPE_CHECKING:  # imported where used: films are read and checked before torch loads
    import torch

FORMAT = "locomad-features-1"
CHUNK_FRAMES = 250
"""Output frames per resumable chunk: 50 s of film at 5 FPS, ~70 MB of decoded 224p frames."""
CACHE = FilmCache(
    "features",
    ".safetensors",
    ("source_size", "source_sha256_1mib", "clip_model", "clip_pretrained", "clip_weights", "fps"),
)
output_path = CACHE.path
partial_dir = CACHE.partial_dir


@dataclass
class FilmResult:
    video: Path
    output: Path
    frames: int
    status: str
    """'done' (extracted now), 'resumed' (continued a partial run) or 'skipped' (already done)."""
    seconds: float = 0.0
    computed_frames: int = 0


def load_features(path: str | Path) -> tuple[torch.Tensor, dict]:
    """(`features` [T, D] fp16, metadata) of a features file. Numeric metadata (fps, duration,
    frames, source_size, source_mtime) come back as numbers, the rest as strings."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LocomadError(f"{path}: no such features file")
    readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            features = f.get_tensor("features")
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise LocomadError(
            f"{path}: not a features file ({' '.join(str(e).split())[:200]})"
        ) from None
    for key, cast in (
        ("fps", float),
        ("duration", float),
        ("source_mtime", float),
        ("frames", int),
        ("source_size", int),
    ):
        if key in meta:
            try:
                meta[key] = cast(meta[key])
            except ValueError:
                raise LocomadError(
                    f"{path}: metadata {key}={meta[key][:40]!r} is not a number"
                ) from None
    for key in ("fps", "duration"):
        if key in meta and not (math.isfinite(meta[key]) and meta[key] > 0):
            raise LocomadError(f"{path}: metadata {key}={meta[key]} is not a positive number")
    if features.is_floating_point():
        check_finite_features(features, path)
    return features, meta


def _redo_command(video: Path, out: Path, card: ModelCard, fps: float) -> str:
    """The command that makes `out` again (describe has no --overwrite: extract-features has)."""
    import shlex

    from locomad_cli.utils import tool_path

    cmd = ["locomad", "extract-features", tool_path(video), "-o", str(out.parent)]
    cmd += ["-m", card.source or card.name]
    cmd += [] if fps == card.fps else ["--fps", f"{fps:g}"]
    cmd.append("--overwrite")
    return " ".join(shlex.quote(c) for c in cmd)


def check_finite_features(features: torch.Tensor, path: Path) -> None:
    """Refuse features holding NaN or infinity (a damaged or hand-made file): the model would
    write "" or "%" for every slot without a word."""
    import torch

    finite = torch.isfinite(features)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        rows = int((~finite).any(dim=-1).sum()) if features.dim() > 1 else bad
        raise LocomadError(
            f"{path}: {bad} non-finite value(s) (NaN or infinity) in {rows} of "
            f"{features.shape[0]} frame(s); extract the features again"
        )


def save_features(tensors: dict[str, torch.Tensor], path: Path, metadata=None) -> None:
    """safetensors' save_file, with its I/O failures (a full disk) raised as the OSError they
    are: safetensors wraps them in its own error type, which names only 'os error 28'."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def _read_metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return None


def _identity(card: ModelCard, fps: float, fingerprint: dict[str, str]) -> dict[str, str]:
    return {
        **fingerprint,
        "clip_model": card.clip.model,
        "clip_pretrained": str(card.clip.pretrained),
        "clip_weights": weights_id(card),
        "fps": f"{fps:g}",
    }


def _chunk_file(part: Path, c: int) -> Path:
    return part / f"chunk-{c:05d}.safetensors"


def _chunk_rows(path: Path) -> int | None:
    """Rows in a finished chunk file, None when it is missing or unreadable (a rename survives
    a killed process, but a power cut may leave an empty file behind it)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(f.get_slice("features").get_shape()[0])
    except Exception:
        return None


def _finished_chunks(part: Path, frames: int, chunk_frames: int) -> set[int]:
    """Chunks an earlier run of the same film and settings finished, whole."""
    return {
        c
        for c in range(math.ceil(frames / chunk_frames))
        if _chunk_rows(_chunk_file(part, c)) == min(chunk_frames, frames - c * chunk_frames)
    }


def _encode_chunk(encoder: ClipEncoder, frames, batch_size: int) -> torch.Tensor:
    """uint8 frames [n, H, W, 3] (numpy) → fp16 features [n, D] on the CPU."""
    import torch

    x = torch.from_numpy(frames)
    cuda = encoder.device.startswith("cuda")
    outs = []
    for i in range(0, len(x), batch_size):
        batch = x[i : i + batch_size]
        if cuda:
            batch = batch.pin_memory().to(encoder.device, non_blocking=True)
        outs.append(encoder.encode_images(batch.permute(0, 3, 1, 2)).half())
    return torch.cat(outs)


def _compute_chunks(
    plan: FramePlan,
    part: Path,
    encoder: ClipEncoder,
    done: set[int],
    batch_size: int,
    chunk_frames: int,
    progress_done: int,
    on_progress: Callable[[int, int], None] | None,
    on_chunk: Callable[[int, int], None] | None,
) -> int:
    """Encode the chunks not yet in `part`, each saved as soon as it is whole so a crash keeps
    it; returns the frames computed."""
    import torch

    computed = 0
    # Pieces come from several readers in any order (parallel.py): a chunk is written when
    # all its frames are encoded.
    pending: dict[int, list[tuple[int, torch.Tensor]]] = {}
    pieces = parallel.decode_pieces(
        plan, chunk_frames, done, piece_frames=max(batch_size, parallel.PIECE_FRAMES)
    )
    try:
        with contextlib.closing(pieces):
            for piece in pieces:
                c = piece.chunk
                feats = _encode_chunk(encoder, piece.frames, batch_size)
                pending.setdefault(c, []).append((piece.offset, feats))
                progress_done += len(feats)
                if on_progress is not None:
                    on_progress(progress_done, plan.frames)
                size = min(chunk_frames, plan.frames - c * chunk_frames)
                if sum(len(f) for _, f in pending[c]) < size:
                    continue
                feats = torch.cat([f for _, f in sorted(pending.pop(c), key=lambda x: x[0])])
                with atomic_path(_chunk_file(part, c)) as tmp:
                    save_features({"features": feats.contiguous()}, tmp)
                computed += len(feats)
                if on_chunk is not None:
                    on_chunk(c, len(feats))
    except LocomadError:
        # bad input (a corrupt film): nothing worth resuming is left behind
        shutil.rmtree(part, ignore_errors=True)
        raise
    except OSError:
        # a full disk: finished chunks are kept for the rerun, an empty start is not
        if not done and not computed:
            shutil.rmtree(part, ignore_errors=True)
        raise
    return computed


def extract_film(
    plan: FramePlan,
    output: Path,
    card: ModelCard,
    encoder: ClipEncoder,
    batch_size: int = 64,
    chunk_frames: int = CHUNK_FRAMES,
    on_progress: Callable[[int, int], None] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> FilmResult:
    """Extract one planned film into `output`, resuming a partial run. `on_progress(done,
    total)` follows output frames (progress bars); `on_chunk(chunk, frames)` runs after each
    newly computed chunk is safely on disk (tests simulate a crash there)."""
    import torch
    from safetensors.torch import load_file

    start = time.perf_counter()
    info, fps = plan.info, plan.fps
    n_chunks = math.ceil(plan.frames / chunk_frames)
    identity = _identity(card, fps, info.fingerprint)
    state = {
        **identity,
        "frames": str(plan.frames),
        "chunk_frames": str(chunk_frames),
        "decode_size": f"{plan.width}x{plan.height}",
        "preprocess": json.dumps(encoder.preprocess_cfg, sort_keys=True, default=list),
        "dtype": str(encoder.dtype),
    }
    part = partial_dir(output)
    done = _finished_chunks(part, plan.frames, chunk_frames) if open_partial(part, state) else set()
    progress_done = sum(min(chunk_frames, plan.frames - c * chunk_frames) for c in done)
    if on_progress is not None:
        on_progress(progress_done, plan.frames)
    computed = 0
    if len(done) < n_chunks:
        computed = _compute_chunks(
            plan,
            part,
            encoder,
            done,
            batch_size,
            chunk_frames,
            progress_done,
            on_progress,
            on_chunk,
        )
    features = torch.cat(
        [load_file(str(_chunk_file(part, c)))["features"] for c in range(n_chunks)]
    )
    if features.shape[0] != plan.frames:
        raise LocomadError(
            f"{info.path}: partial state is inconsistent; delete {part} and run again"
        )
    meta = {
        "format": FORMAT,
        **identity,
        "card": card.name,
        "frames": str(plan.frames),
        "duration": f"{plan.duration:.6f}",
        "dim": str(features.shape[1]),
        "decode_size": state["decode_size"],
        "image_size": "x".join(str(s) for s in encoder.image_size),
        "time_rule": "frame i = what is on screen at i/fps seconds after the first frame",
    }
    with atomic_path(output) as tmp:
        save_features({"features": features.contiguous()}, tmp, metadata=meta)
    shutil.rmtree(part, ignore_errors=True)
    status = "resumed" if done else "done"
    return FilmResult(info.path, output, plan.frames, status, time.perf_counter() - start, computed)


def write_h5(h5_path: str | Path, outputs: list[Path]) -> int:
    """Add or replace one dataset per film (key = film id = file stem, [T, D] float32) in a
    MAD-layout HDF5. The file is rewritten through a temporary copy and a rename, so a crash
    never leaves it half-updated; ranks of a multi-GPU run take turns through a lock file."""
    import fcntl

    import h5py

    h5_path = Path(h5_path)
    lock_path = h5_path.with_name(h5_path.name + ".lock")
    films = [(p.name[: -len(CACHE.suffix)], p) for p in outputs]
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with atomic_path(h5_path) as tmp:
            if h5_path.exists():
                shutil.copyfile(h5_path, tmp)
            try:
                h5 = h5py.File(tmp, "a")
            except OSError as e:
                raise LocomadError(f"{h5_path}: not an HDF5 file ({e})") from None
            with h5:
                for key, path in films:
                    features, meta = load_features(path)
                    if key in h5:
                        del h5[key]
                    ds = h5.create_dataset(key, data=features.float().numpy())
                    ds.attrs["fps"] = meta["fps"]
                    ds.attrs["clip_model"] = meta.get("clip_model", "")
                    ds.attrs["clip_pretrained"] = meta.get("clip_pretrained", "")
    return len(films)


def extract_features(
    videos: list[str | Path],
    card: ModelCard,
    out_dir: str | Path | None = None,
    fps: float | None = None,
    batch_size: int = 64,
    device: str = "auto",
    dtype: str = "auto",
    h5: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    chunk_frames: int = CHUNK_FRAMES,
    on_chunk: Callable[[Path, int, int], None] | None = None,
    shared: bool = True,
    load_encoder: Callable[[ModelCard, str, torch.dtype], ClipEncoder] = load_clip,
    threads: int | None = None,
) -> list[FilmResult]:
    """Extract features for every film (this rank's share under torchrun/accelerate, see
    films.share; `shared=False`: all of them, for a caller that has already taken its share).
    `load_encoder` builds the CLIP when a film needs it (describe keeps one across films).
    `threads`: torch's CPU threads while encoding (None: threads.pick_threads' choice, which
    leaves a core to the decode thread).
    All inputs are checked before any work starts, so a bad file fails fast and writes
    nothing."""
    fps = float(fps if fps is not None else card.fps)
    if not math.isfinite(fps) or fps <= 0 or fps > 1000:
        raise LocomadError(f"--fps must be positive (at most 1000), got {fps:g}")
    if batch_size < 1:
        raise LocomadError(f"--batch-size must be at least 1, got {batch_size}")
    if not videos:
        raise LocomadError("no video given")
    infos = [probe(v) for v in videos]
    outputs = [output_path(info.path, out_dir) for info in infos]
    seen: dict[Path, Path] = {}
    for info, out in zip(infos, outputs, strict=True):
        if out in seen:
            raise LocomadError(f"{info.path} and {seen[out]} would both write {out}")
        seen[out] = info.path
    folders = sorted({o.parent for o in outputs} | ({Path(h5).parent} if h5 else set()))
    created = sorted(
        {p for f in folders for p in (f, *f.parents) if not p.exists()},
        key=lambda p: len(p.parts),
        reverse=True,
    )
    for folder in folders:
        check_writable_dir(folder)
    try:
        return _extract_all(
            infos,
            outputs,
            card,
            fps,
            batch_size,
            device,
            dtype,
            h5,
            overwrite,
            progress,
            chunk_frames,
            on_chunk,
            shared,
            load_encoder,
            threads=threads,
        )
    except LocomadError:
        for folder in created:  # leave no trace of a run that failed on bad input
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _extract_all(
    infos: list[VideoInfo],
    outputs: list[Path],
    card: ModelCard,
    fps: float,
    batch_size: int,
    device: str,
    dtype: str,
    h5: str | Path | None,
    overwrite: bool,
    progress: bool,
    chunk_frames: int,
    on_chunk: Callable[[Path, int, int], None] | None,
    shared: bool = True,
    load_encoder: Callable[[ModelCard, str, torch.dtype], ClipEncoder] = load_clip,
    threads: int | None = None,
) -> list[FilmResult]:
    _, world, local_rank = rank_and_world()
    mine = share(range(len(infos))) if shared else list(range(len(infos)))
    todo: list[int] = []
    results: list[FilmResult] = []
    for i in mine:
        info, out = infos[i], outputs[i]
        if out.exists() and not overwrite:
            meta = _read_metadata(out)
            want = _identity(card, fps, info.fingerprint)
            if not CACHE.matches(meta, want):
                raise LocomadError(
                    f"{out} exists but was made from another file, model or FPS; replace it "
                    f"with: {_redo_command(info.path, out, card, fps)} (or delete it)"
                )
            results.append(FilmResult(info.path, out, int(meta["frames"]), "skipped"))
        else:
            todo.append(i)
    if overwrite:
        for i in todo:
            shutil.rmtree(partial_dir(outputs[i]), ignore_errors=True)

    if todo:
        # Reading every film's frame index (and first frame) first catches unreadable films
        # before any work, and before torch and open_clip load (seconds, most of the start-up)
        # when the card's config tells the CLIP's input size.
        side = input_side(card)
        plans = {i: plan_frames(infos[i], fps, side) for i in todo} if side else {}
        dev = resolve_device(device)
        if dev == "cuda" and world > 1:
            import torch

            # several processes may share a GPU: decoding, not the GPU, is then the limit
            dev = f"cuda:{local_rank % torch.cuda.device_count()}"
        encoder = load_encoder(card, dev, resolve_dtype(dtype, dev))
        if side != encoder.decode_short_side:  # the config could not tell: plan at its size
            plans = {i: plan_frames(infos[i], fps, encoder.decode_short_side) for i in todo}
        for i in todo[1:]:  # one open reader at a time: each holds a file and its frame index
            plans[i].reader = None
        # torch's pool on every core would fight the decode thread: 30x slower, measured
        with torch_threads(threads, decoding=True, device=dev):
            for i in todo:
                info, out, plan = infos[i], outputs[i], plans[i]
                hint = "free some space and run the same command again (finished chunks are kept)"
                lock = lock_path(out.parent, f"{out.name[: -len(CACHE.suffix)]}.features")
                bar = progress_bar(info.path.stem, show=progress, unit="frames")
                with (
                    output_lock(lock, what=f"the features {out}"),  # one writer per film
                    bar as update,
                    write_errors(out, hint),
                ):
                    hook = None if on_chunk is None else functools.partial(on_chunk, info.path)
                    results.append(
                        extract_film(
                            plan, out, card, encoder, batch_size, chunk_frames, update, hook
                        )
                    )
    if h5 is not None:
        with write_errors(h5):
            write_h5(h5, [r.output for r in results])
    order = {outputs[i]: n for n, i in enumerate(mine)}
    return sorted(results, key=lambda r: order[r.output])


def summary_line(results: list[FilmResult]) -> str:
    """One line for the end of a run: films done/resumed/skipped, frames, speed."""
    made = [r for r in results if r.status != "skipped"]
    skipped = len(results) - len(made)
    frames = sum(r.computed_frames for r in made)
    seconds = sum(r.seconds for r in made)
    speed = f", {frames / seconds:.1f} frames/s" if seconds > 0 and frames else ""
    rank, world, _ = rank_and_world()
    who = f"rank {rank}/{world}: " if world > 1 else ""
    return (
        f"{who}extracted {len(made)} film(s), {frames} frames in {seconds:.1f} s{speed}; "
        f"skipped {skipped} already done"
    )
