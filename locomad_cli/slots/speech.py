"""Speech in a film's soundtrack: decode with ffmpeg (16 kHz mono), find speech with silero-vad.

Audio description must never be spoken over dialogue, and subtitle files miss lines (songs,
background speech, forced-only tracks) or do not exist, so slots are also kept off what the
soundtrack itself says. silero-vad gives a speech probability per 32 ms window; its own
`get_speech_timestamps_from_probs` turns them into intervals.

Speed: the model is a small recurrent network run window by window, so one long stream is
slow (about 1 minute per 2 hours of film on one core). The film is cut into rows of ~31 s that
run side by side as one batch, each row starting a second early so that the network's state has
settled when its own windows begin (a fresh state at every row would be a fresh file). The ONNX
model runs under onnxruntime: no pickle, no TorchScript.

Cache: `<stem>.speech.safetensors` holds the probabilities (one per window, fp16) and metadata
naming the source file (size and SHA-256 of its first MiB, like the feature files) and the model.
While a film runs, finished blocks of ~10 minutes sit in `<stem>.speech.partial/`, so a killed
run continues from the last finished block.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from locomad_cli.features.cache import FilmCache, open_partial
from locomad_cli.features.video import VideoInfo, probe
from locomad_cli.utils import LocomadError, atomic_path

log = logging.getLogger(__name__)

FORMAT = "locomad-speech-1"
SAMPLE_RATE = 16000
WINDOW = 512
"""Samples per silero-vad window at 16 kHz (32 ms)."""
ROW_WINDOWS = 960
"""Windows per batch row (30.72 s)."""
WARMUP_WINDOWS = 32
"""Windows (1.02 s) of the audio before a row run through the network first, then dropped."""
BLOCK_ROWS = 20
"""Rows per resumable block (614.4 s, about 10 minutes; 39 MB of float32 audio)."""
CACHE = FilmCache(
    "speech",
    ".safetensors",
    ("source_size", "source_sha256_1mib", "vad_model", "layout", "audio_stream"),
)
output_path = CACHE.path
partial_dir = CACHE.partial_dir


class AudioError(LocomadError):
    """The film's audio stream exists but cannot be decoded."""


@dataclass
class VadParams:
    """silero-vad's thresholds (its own defaults). They act on cached probabilities, so
    changing them never runs the network again."""

    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30


@dataclass
class Speech:
    """Where the film's soundtrack holds speech."""

    intervals: list[tuple[float, float]]
    """(start, end) in seconds, in order, not overlapping."""
    path: Path
    """The cache file the intervals come from."""
    status: str
    """'done' (computed now), 'resumed' (continued a partial run) or 'cached'."""
    duration: float
    """Seconds of decoded audio."""
    model: str
    """Which VAD made them ('silero-vad 6.2.3 (onnx)')."""


def vad_model_name() -> str:
    try:
        version = metadata.version("silero-vad")
    except metadata.PackageNotFoundError:
        raise LocomadError("silero-vad is not installed (pip install silero-vad)") from None
    return f"silero-vad {version} (onnx)"


def _layout() -> str:
    return f"sr{SAMPLE_RATE}/w{WINDOW}/row{ROW_WINDOWS}/warmup{WARMUP_WINDOWS}"


def _identity(film: VideoInfo) -> dict[str, str]:
    return {
        **film.fingerprint,
        "vad_model": vad_model_name(),
        "layout": _layout(),
        "audio_stream": "0:a:0",
    }


def _load_vad():  # -> silero_vad.utils_vad.OnnxWrapper
    """silero-vad's packaged ONNX model. Importing silero_vad sets torch's thread count to 1
    for the whole process; the caller's setting is put back."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad

        with warnings.catch_warnings():  # its own use of a deprecated importlib call
            warnings.simplefilter("ignore", DeprecationWarning)
            return load_silero_vad(onnx=True)
    except ImportError as e:
        raise LocomadError(
            f"silero-vad or onnxruntime is missing ({e}): pip install silero-vad onnxruntime"
        ) from None
    finally:
        torch.set_num_threads(threads)


def _probabilities(model, audio: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Speech probability per window of `audio` (float32, 16 kHz), rows run as one batch;
    `before` is the audio just before it (up to WARMUP_WINDOWS windows; zeros at the film's
    start stand in for it)."""
    import torch

    n_win = math.ceil(len(audio) / WINDOW)
    warm = WARMUP_WINDOWS * WINDOW
    row = ROW_WINDOWS * WINDOW
    rows = math.ceil(n_win / ROW_WINDOWS)
    padded = np.zeros(warm + rows * row, dtype=np.float32)
    before = before[len(before) - warm :] if len(before) > warm else before
    padded[warm - len(before) : warm] = before
    padded[warm : warm + len(audio)] = audio
    batch = np.stack([padded[r * row : r * row + warm + row] for r in range(rows)])
    with torch.no_grad():
        probs = model.audio_forward(torch.from_numpy(batch), SAMPLE_RATE).numpy()
    return probs[:, WARMUP_WINDOWS:].reshape(-1)[:n_win].astype(np.float32)


def _ffmpeg_cmd(video: Path, start_s: float) -> list[str]:
    cmd = ["ffmpeg", "-nostdin", "-v", "error"]
    if start_s > 0:
        cmd += ["-ss", f"{start_s:.6f}"]
    return cmd + [
        "-i",
        str(video),
        "-map",
        "0:a:0",
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-f",
        "s16le",
        "-",
    ]


def decode_blocks(
    video: Path, first_block: int = 0, block_rows: int = BLOCK_ROWS
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(block number, float32 audio of the block, audio just before it) from `first_block`
    on, decoded by one ffmpeg process that a thread reads ahead (ffmpeg decodes on its own core
    while the network runs). An ffmpeg failure raises AudioError with its last message."""
    block = block_rows * ROW_WINDOWS * WINDOW * 2  # bytes of s16le
    skip = WARMUP_WINDOWS * WINDOW * 2 if first_block else 0
    start = (first_block * block - skip) / 2 / SAMPLE_RATE
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(_ffmpeg_cmd(video, start), stdout=subprocess.PIPE, stderr=err)
        except FileNotFoundError:
            raise LocomadError("ffmpeg is not installed (apt-get install ffmpeg)") from None
        items: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def read() -> None:
            try:
                while not stop.is_set():
                    data = proc.stdout.read(block)
                    items.put(data)
                    if len(data) < block:
                        return
            except BaseException as e:  # handed to the consumer
                items.put(e)

        thread = threading.Thread(target=read, name="locomad-audio", daemon=True)
        thread.start()
        try:
            buf = bytearray()
            before = np.zeros(0, dtype=np.float32)
            k, eof = first_block, False
            while not eof:
                data = items.get()
                if isinstance(data, BaseException):
                    raise data
                eof = len(data) < block
                buf += data
                if skip and (len(buf) >= skip or eof):
                    before = _floats(buf[:skip])
                    del buf[:skip]
                    skip = 0
                while len(buf) >= block or (eof and len(buf) >= 2):
                    audio = _floats(buf[:block])
                    del buf[:block]
                    if eof and not buf:
                        _check_exit(proc, err, video)
                    yield k, audio, before
                    before = audio[-WARMUP_WINDOWS * WINDOW :]
                    k += 1
            _check_exit(proc, err, video)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(queue.Empty):
                while True:
                    items.get_nowait()
            proc.wait()
            thread.join(timeout=10)


def _floats(pcm: bytes | bytearray) -> np.ndarray:
    return np.frombuffer(bytes(pcm[: len(pcm) // 2 * 2]), dtype="<i2").astype(np.float32) / 32768


def _check_exit(proc: subprocess.Popen, err, video: Path) -> None:
    """AudioError with ffmpeg's last line when it failed (a stream that decodes half is
    refused too: the half that decoded cannot tell where the rest speaks)."""
    code = proc.wait()
    if code != 0:
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
        why = lines[-1][:200] if lines else f"ffmpeg exit code {code}"
        raise AudioError(f"{video}: the audio stream cannot be decoded ({why})")


def _block_file(part: Path, k: int) -> Path:
    return part / f"block-{k:05d}.safetensors"


def _finished_blocks(part: Path) -> list[np.ndarray]:
    """Probabilities of the blocks an earlier run of the same film finished, in order."""
    from safetensors.numpy import load_file

    done: list[np.ndarray] = []
    while _block_file(part, len(done)).is_file():
        try:
            done.append(load_file(str(_block_file(part, len(done))))["probs"])
        except Exception:
            break  # a torn last block is computed again
    return done


def load_speech_file(path: Path) -> tuple[dict[str, str], np.ndarray] | None:
    """(metadata, probabilities) of a speech cache file, None when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {}), f.get_tensor("probs").astype(np.float32)
    except Exception:
        return None


def intervals_from_probs(
    probs: np.ndarray, samples: int, params: VadParams | None = None
) -> list[tuple[float, float]]:
    """silero-vad's own hysteresis (get_speech_timestamps_from_probs) on cached windows."""
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    p = params or VadParams()
    stamps = get_speech_timestamps_from_probs(
        [float(x) for x in probs],
        sampling_rate=SAMPLE_RATE,
        threshold=p.threshold,
        min_speech_duration_ms=p.min_speech_ms,
        min_silence_duration_ms=p.min_silence_ms,
        speech_pad_ms=p.speech_pad_ms,
        audio_length_samples=samples,
    )
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


def detect_speech(
    video: str | Path,
    out_dir: str | Path | None = None,
    params: VadParams | None = None,
    on_block: Callable[[int, float], None] | None = None,
    block_rows: int = BLOCK_ROWS,
    on_start: Callable[[], None] | None = None,
) -> Speech:
    """Speech intervals of the film's first audio stream, cached in `out_dir` (default:
    beside the film). A cache beside the film that matches is used wherever `out_dir` is;
    a cache of another file or model is recomputed. `on_block(block, seconds_done)` runs
    after each block of `block_rows` rows is safely on disk (tests simulate a crash there);
    `on_start()` when the soundtrack has to be listened to (no cache).

    Raises LocomadError when the film has no audio stream, AudioError when ffmpeg cannot
    decode it; nothing is left behind then."""
    from safetensors.numpy import save_file

    film = probe(video)
    video = film.path
    if not film.audio:
        raise LocomadError(f"{video}: the film has no audio stream")
    identity = _identity(film)
    found = CACHE.find(video, out_dir, identity, load_speech_file)
    if found is not None:
        path, meta, probs = found
        return Speech(
            intervals_from_probs(probs, int(meta["samples"]), params),
            path,
            "cached",
            int(meta["samples"]) / SAMPLE_RATE,
            meta["vad_model"],
        )
    if on_start is not None:
        on_start()
    target = output_path(video, out_dir)
    part = partial_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {**identity, "block_rows": str(block_rows)}
    done = _finished_blocks(part) if open_partial(part, state) else []
    resumed = bool(done)
    samples = len(done) * block_rows * ROW_WINDOWS * WINDOW
    model = _load_vad()
    try:
        for k, audio, before in decode_blocks(video, len(done), block_rows):
            probs = _probabilities(model, audio, before)
            with atomic_path(_block_file(part, k)) as tmp:
                save_file({"probs": probs.astype(np.float16)}, str(tmp))
            done.append(probs.astype(np.float16).astype(np.float32))
            samples += len(audio)
            if on_block is not None:
                on_block(k, samples / SAMPLE_RATE)
    except LocomadError:
        shutil.rmtree(part, ignore_errors=True)  # bad input: nothing worth resuming
        raise
    if samples == 0:
        shutil.rmtree(part, ignore_errors=True)
        raise AudioError(f"{video}: the audio stream cannot be decoded (no samples)")
    probs = np.concatenate(done)
    meta = {
        "format": FORMAT,
        **identity,
        "samples": str(samples),
        "sample_rate": str(SAMPLE_RATE),
        "window": str(WINDOW),
        "duration": f"{samples / SAMPLE_RATE:.6f}",
    }
    with atomic_path(target) as tmp:
        save_file({"probs": probs.astype(np.float16)}, str(tmp), metadata=meta)
    shutil.rmtree(part, ignore_errors=True)
    return Speech(
        intervals_from_probs(probs, samples, params),
        target,
        "resumed" if resumed else "done",
        samples / SAMPLE_RATE,
        identity["vad_model"],
    )
