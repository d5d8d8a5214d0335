"""Mix and deliver: the AD stem, the programme ducked under it, loudness, the extended-AD cut, and
the described film (MKV or MP4) with its AD audio and text tracks.

Data in: voiced cues (a 48 kHz mono WAV each, placed on the output timeline) and, for extended
AD, the pauses (film time, seconds held). Everything audible is done by ffmpeg's filters:

- **stem**: each cue's samples written at its start sample into silence (`FILM.ad.wav`, 48 kHz);
- **ducking**: a gain curve (`depth_db` under each cue, linear-in-dB ramps of `ramp` seconds
  before and after, never reaching back into dialogue), sampled at 1 kHz, resampled by
  `aresample` and applied with `amultiply`; cues closer than two ramps share one dip;
- **level**: the AD is set to the programme's integrated loudness (+ `ad_level` LU), then the
  whole mix to the loudness spec's target (measured with ffmpeg's `ebur128` meter), a
  look-ahead limiter (`alimiter`, delay compensated) only when the peak would pass the spec's
  true peak; the stem gets the same gain, so `mix - stem` is the ducked programme. Specs
  (`SPECS`): **ebu** (R128: -23 LUFS integrated over everything, -1 dBTP) and **netflix**
  (-27 LKFS ±2 *dialogue-gated*, -2 dBTP, 48 kHz): dialogue-gated is the same BS.1770 meter
  run on the mix multiplied by a 0/1 speech gate (the speech the VAD finds in the programme,
  and the AD's own speech), so only what is said is measured;
- **extended AD**: the film is cut at each pause and the picture held (`tpad` clone) while the
  programme is silent (`apad`); the video is then re-encoded (a held frame is a new frame);
- **mux**: video stream-copied (bit-identical packets) unless extended, original audio copied,
  the AD mix as an AAC track (language, title, `visual_impaired`), the descriptions as a text
  track (WebVTT in MKV, mov_text in MP4; language, `descriptions`). ffmpeg 5.1 does not write
  Matroska's FlagTextDescriptions, so `mkvpropedit` (mkvtoolnix) sets it when installed.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locomad_cli.utils import LocomadError, tool_write_error

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
ENV_RATE = 1000
"""Samples per second of the ducking gain curve (ramps are 150-300 ms: 150+ points each)."""
MIN_RAMP = 0.05
"""Shortest ramp (s) when dialogue leaves less room than `ramp`: no click."""
CONTAINERS = ("mkv", "mp4")


@dataclass(frozen=True)
class LoudnessSpec:
    """A delivery spec: what is measured, the target and how far from it a mix may be."""

    name: str
    target: float
    """LUFS (= LKFS)."""
    true_peak: float
    """Highest true peak allowed (dBTP)."""
    gate: str
    """'programme': integrated over the whole mix (R128); 'dialogue': over speech only."""
    tolerance: float
    """LU either side of the target the spec accepts."""


SPECS = {
    "ebu": LoudnessSpec("ebu", -23.0, -1.0, "programme", 1.0),
    "netflix": LoudnessSpec("netflix", -27.0, -2.0, "dialogue", 2.0),
}
"""EBU R128 (and its -1 dBTP streaming variant); Netflix's dialogue-gated ITU-R BS.1770 spec."""


@dataclass
class PlacedCue:
    """One voiced cue on the output timeline."""

    start: float
    duration: float
    path: Path
    """48 kHz mono 16-bit WAV."""

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass
class Pause:
    """Extended AD: the picture is held at film time `at` for `duration` seconds."""

    at: float
    duration: float


@dataclass
class MixOptions:
    """How the AD is mixed and delivered; the CLI fills it from its flags."""

    duck_db: float = -12.0
    ramp: float = 0.2
    spec: str = "ebu"
    """A name in SPECS: what loudness is measured and the targets below default to."""
    loudness: float | None = None
    """Target (LUFS); None: the spec's."""
    true_peak: float | None = None
    """Highest true peak (dBTP); None: the spec's."""
    ad_level: float = 0.0
    """AD speech loudness relative to the programme's integrated loudness (LU)."""
    language: str = "en"
    container: str = "mkv"
    title: str = "Audio description"
    crf: int = 18
    """x264 quality of the extended cut (the only case where video is re-encoded)."""

    def __post_init__(self) -> None:
        spec = SPECS.get(self.spec)
        if spec is not None:
            self.loudness = spec.target if self.loudness is None else self.loudness
            self.true_peak = spec.true_peak if self.true_peak is None else self.true_peak

    @property
    def loudness_spec(self) -> LoudnessSpec:
        return SPECS[self.spec]

    def check(self) -> None:
        if self.spec not in SPECS:
            raise LocomadError(f"unknown --spec '{self.spec}' (choose {', '.join(SPECS)})")
        self.__post_init__()
        if not (-9.0 <= self.true_peak <= 0.0):
            raise LocomadError(f"the true peak must be between -9 and 0 dBTP, got {self.true_peak}")
        if self.container not in CONTAINERS:
            raise LocomadError(
                f"unknown --container '{self.container}' (choose {', '.join(CONTAINERS)})"
            )
        if not (-60.0 <= self.duck_db <= 0.0) or not math.isfinite(self.duck_db):
            raise LocomadError(f"--duck must be between -60 and 0 dB, got {self.duck_db}")
        if not (0.0 < self.ramp <= 2.0):
            raise LocomadError(f"--duck-ramp must be in (0, 2] seconds, got {self.ramp}")
        if not (-70.0 <= self.loudness <= -5.0):
            raise LocomadError(f"--loudness must be between -70 and -5 LUFS, got {self.loudness}")
        if not (-20.0 <= self.ad_level <= 20.0):
            raise LocomadError(f"--ad-level must be between -20 and 20 LU, got {self.ad_level}")
        iso639(self.language)


def iso639(tag: str) -> str:
    """A BCP 47 tag ('en', 'de-CH') as the ISO 639-2/B code Matroska and MP4 tracks carry."""
    import langcodes

    try:
        return langcodes.Language.get(tag).to_alpha3(variant="B")
    except (LookupError, ValueError):
        raise LocomadError(f"--language '{tag}': not a language tag (en, de, fr-CA ...)") from None


# --- ffmpeg ---------------------------------------------------------------------------------


def _run(cmd: list[str], what: str, out: Path | None = None) -> subprocess.CompletedProcess:
    """Run a tool; its failure is one line. A write error on `out` that the tool reports only
    in its text (ffmpeg may exit 0 after a full disk cut the file) is raised as the OSError
    it is, so that the caller keeps nothing of it and says which disk is full."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise LocomadError(f"{cmd[0]} not found: install ffmpeg (apt-get install ffmpeg)") from None
    err = tool_write_error(r.stderr, out) if out is not None else None
    if err is not None:
        raise err
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        raise LocomadError(f"{what} failed: {lines[-1] if lines else f'exit {r.returncode}'}")
    return r


FFMPEG = ["ffmpeg", "-hide_banner", "-nostdin", "-y"]


def loudness(cmd_inputs: list[str], graph: str | None = None) -> dict[str, float]:
    """Integrated loudness (LUFS), loudness range (LU) and true peak (dBTP) of the audio
    `graph` makes of the inputs (None: the first input's first audio stream), from the
    summary of ffmpeg's EBU R128 meter (`ebur128`, BS.1770 gating, true peak by
    oversampling). Silence (nothing above the -70 LUFS gate) is -inf."""
    chain = "ebur128=peak=true:framelog=verbose"
    if graph is None:
        args = [*cmd_inputs, "-map", "0:a:0", "-af", chain]
    else:
        args = [*cmd_inputs, "-filter_complex", f"{graph},{chain}[m]", "-map", "[m]"]
    r = _run([*FFMPEG, "-v", "info", *args, "-f", "null", "-"], "loudness measurement")
    summary = r.stderr.rpartition("Summary:")[2]

    def num(pattern: str) -> float:
        found = re.search(pattern + r"\s+(-?inf|-?\d+(?:\.\d+)?)", summary)
        if found is None:
            raise LocomadError("loudness measurement failed: no ebur128 summary from ffmpeg")
        return float(found.group(1))

    integrated = num(r"I:")
    return {
        "integrated": integrated if integrated > -69.95 else -math.inf,
        "lra": num(r"LRA:"),
        "true_peak": num(r"Peak:"),
    }


# --- timeline -------------------------------------------------------------------------------


def output_time(t: float, pauses: Sequence[Pause]) -> float:
    """Film time `t` on the output timeline: every pause before it adds its hold."""
    return t + sum(p.duration for p in pauses if p.at < t - 1e-9)


def to_output_spans(spans: list[tuple[float, float]], pauses: Sequence[Pause]):
    """Intervals of film time (dialogue) on the output timeline."""
    return [(output_time(a, pauses), output_time(b, pauses)) for a, b in spans]


# --- the AD stem ----------------------------------------------------------------------------


def write_stem(cues: Sequence[PlacedCue], duration: float, out: Path) -> None:
    """48 kHz mono 16-bit WAV of `duration` seconds: silence, each cue at its start sample.
    Written in order, a cue at a time (a two-hour stem never sits in memory). A cue that
    would overlap the one before starts where it ends (never happens for fitted cues)."""
    total = int(round(duration * SAMPLE_RATE))
    pos = 0
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        for cue in sorted(cues, key=lambda c: c.start):
            start = max(int(round(cue.start * SAMPLE_RATE)), pos)
            if start >= total:
                break
            with wave.open(str(cue.path), "rb") as r:
                if r.getframerate() != SAMPLE_RATE or r.getnchannels() != 1:
                    raise LocomadError(f"{cue.path}: not a 48 kHz mono cue (delete the cache)")
                data = r.readframes(r.getnframes())
            _silence(w, start - pos)
            n = min(len(data) // 2, total - start)
            w.writeframes(data[: 2 * n])
            pos = start + n
        _silence(w, total - pos)


def _silence(w: wave.Wave_write, frames: int) -> None:
    chunk = b"\0\0" * SAMPLE_RATE
    while frames > 0:
        n = min(frames, SAMPLE_RATE)
        w.writeframes(chunk[: 2 * n])
        frames -= n


# --- ducking --------------------------------------------------------------------------------


def duck_spans(
    cues: Sequence[PlacedCue], ramp: float, dialogue: Sequence[tuple[float, float]] = ()
) -> list[tuple[float, float, float, float]]:
    """(fade-down start, speech start, speech end, fade-up end) per dip, output timeline.
    Cues less than two ramps apart share one dip; a fade never starts inside dialogue
    (it shortens to what the gap allows, but not below MIN_RAMP)."""
    spans: list[list[float]] = []
    for c in sorted(cues, key=lambda c: c.start):
        if spans and c.start - spans[-1][1] < 2 * ramp:
            spans[-1][1] = max(spans[-1][1], c.end)
        else:
            spans.append([c.start, c.end])
    out = []
    for a, b in spans:
        before = [e for s, e in dialogue if e <= a + 1e-9 and e > a - ramp]
        after = [s for s, e in dialogue if s >= b - 1e-9 and s < b + ramp]
        down = max(a - ramp, max(before, default=-math.inf), 0.0)
        down = min(down, a - MIN_RAMP) if a - down < MIN_RAMP else down
        up = min(b + ramp, min(after, default=math.inf))
        up = max(up, b + MIN_RAMP)
        out.append((max(down, 0.0), a, b, up))
    return out


def duck_envelope(
    spans: Sequence[tuple[float, float, float, float]], duration: float, depth_db: float
) -> np.ndarray:
    """The gain curve (linear amplitude, ENV_RATE samples per second): 1 outside the dips,
    `depth_db` inside, linear-in-dB ramps. One second longer than `duration` so the
    programme, not the curve, decides where the mix ends."""
    n = int(math.ceil((duration + 1.0) * ENV_RATE))
    db = np.zeros(n, dtype=np.float64)
    t = np.arange(n, dtype=np.float64) / ENV_RATE
    for down, a, b, up in spans:
        i, j = max(0, int(down * ENV_RATE)), min(n, int(math.ceil(up * ENV_RATE)) + 1)
        if i >= j:
            continue
        tt = t[i:j]
        fall = np.clip((tt - down) / max(a - down, 1e-6), 0.0, 1.0)
        rise = np.clip((up - tt) / max(up - b, 1e-6), 0.0, 1.0)
        db[i:j] = np.minimum(db[i:j], depth_db * np.minimum(fall, rise))
    return (10.0 ** (db / 20.0)).astype(np.float32)


# --- extended AD ----------------------------------------------------------------------------


def extended_cut(
    video: Path,
    duration: float,
    pauses: Sequence[Pause],
    video_out: Path | None,
    audio_out: Path | None,
    crf: int = 18,
) -> None:
    """The film with the picture held (last frame repeated) and the programme silent for each
    pause. One input per segment (`-ss`/`-t`), so nothing is buffered across the film."""
    cuts = sorted(pauses, key=lambda p: p.at)
    bounds = [0.0] + [p.at for p in cuts] + [duration]
    holds = [p.duration for p in cuts] + [0.0]
    args: list[str] = []
    parts, labels = [], []
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        length = max(b - a, 0.001)
        args += ["-ss", f"{a:.6f}", "-t", f"{length:.6f}", "-i", str(video)]
        hold = holds[k]
        if video_out is not None:
            parts.append(
                f"[{k}:v:0]trim=duration={length:.6f},setpts=PTS-STARTPTS,"
                f"tpad=stop_mode=clone:stop_duration={hold:.6f}[v{k}]"
            )
            labels.append(f"[v{k}]")
        if audio_out is not None:
            parts.append(
                f"[{k}:a:0]atrim=duration={length:.6f},asetpts=PTS-STARTPTS,"
                f"aresample={SAMPLE_RATE},apad=whole_dur={length + hold:.6f}[a{k}]"
            )
            labels.append(f"[a{k}]")
    n = len(bounds) - 1
    v, a = int(video_out is not None), int(audio_out is not None)
    graph = ";".join(parts) + ";" + "".join(labels) + f"concat=n={n}:v={v}:a={a}"
    graph += "".join(x for x, on in (("[v]", v), ("[a]", a)) if on)
    outs: list[str] = []
    if video_out is not None:
        outs += ["-map", "[v]", "-c:v", "libx264", "-crf", str(crf), "-preset", "veryfast"]
        outs += ["-pix_fmt", "yuv420p", "-an", str(video_out)]
    if audio_out is not None:
        outs += ["-map", "[a]", "-c:a", "flac", "-vn", str(audio_out)]
    cmd = [*FFMPEG, "-v", "error", *args, "-filter_complex", graph, *outs]
    _run(cmd, "extended-AD cut", video_out or audio_out)


# --- the mix --------------------------------------------------------------------------------


@dataclass
class MixResult:
    ad_gain_db: float
    """Gain applied to the raw stem so the AD sits at programme loudness + ad_level."""
    mix_gain_db: float
    """Gain applied to the whole mix to reach the loudness target."""
    limited: bool
    programme: dict[str, float] | None
    mix: dict[str, float]
    """Loudness of the delivered mix (or of the AD alone when the film has no audio)."""
    dialogue: float | None = None
    """Dialogue-gated loudness of the delivered mix (LUFS) when the spec asks for it; -inf
    when the gate found no speech."""


GATE_ARGS = ["-f", "f32le", "-ar", str(ENV_RATE), "-ac", "1"]
"""How ffmpeg reads a gain curve or speech gate (raw float32 at ENV_RATE)."""


def speech_gate(spans: Sequence[tuple[float, float]], duration: float) -> np.ndarray:
    """1 inside the speech spans, 0 elsewhere (ENV_RATE samples per second, one second longer
    than `duration` like the ducking curve): multiplied into the mix, only speech is metered."""
    n = int(math.ceil((duration + 1.0) * ENV_RATE))
    gate = np.zeros(n, dtype=np.float32)
    for a, b in spans:
        gate[max(0, int(round(a * ENV_RATE))) : max(0, int(round(b * ENV_RATE)))] = 1.0
    return gate


def gated_loudness(
    inputs: list[str], graph: str | None, gate: Path, channels: int
) -> dict[str, float]:
    """loudness() of what `graph` makes (None: the first input's first audio stream) with
    everything outside the speech `gate` silenced: BS.1770's absolute gate (-70 LUFS) then
    drops the silent blocks, so the integrated figure is the dialogue's."""
    k = inputs.count("-i")
    layout = "stereo" if channels == 2 else "mono"
    fmt = f"aformat=sample_fmts=fltp:channel_layouts={layout}"
    spread = "pan=stereo|c0=c0|c1=c0," if channels == 2 else ""
    src = graph if graph is not None else "[0:a:0]anull"
    g = (
        f"{src},aresample={SAMPLE_RATE},{fmt}[pre];"
        f"[{k}:a]aresample={SAMPLE_RATE},{spread}{fmt}[gate];[pre][gate]amultiply"
    )
    return loudness([*inputs, *GATE_ARGS, "-i", str(gate)], g)


def mix(
    programme: list[str] | None,
    stem_raw: Path,
    envelope: Path,
    stem_out: Path,
    mix_out: Path | None,
    opts: MixOptions,
    gate: Path | None = None,
) -> MixResult:
    """Duck the programme (ffmpeg input args, its first audio stream) under the AD, set the
    levels and write the stem and the mix (48 kHz WAV). No programme: the AD alone is
    brought to the target and written to `stem_out`. A dialogue-gated spec measures through
    `gate` (speech_gate of the dialogue on the output timeline)."""
    dialogue_gated = opts.loudness_spec.gate == "dialogue" and gate is not None

    def level(inputs: list[str], graph: str | None, channels: int):
        """(what the spec measures, the whole loudness dict, the dialogue-gated figure)."""
        whole = loudness(inputs, graph)
        if not dialogue_gated:
            return whole["integrated"], whole, None
        speech = gated_loudness(inputs, graph, gate, channels)["integrated"]
        if not math.isfinite(speech):
            log.warning("no speech to meter dialogue-gated loudness: integrated loudness used")
            return whole["integrated"], whole, speech
        return speech, whole, speech

    stem_in = ["-i", str(stem_raw)]
    if programme is None:
        measured, ad, _ = level(stem_in, None, 1)
        if not math.isfinite(ad["integrated"]):
            raise LocomadError("the AD stem is silent: no cue was voiced")
        gain = opts.loudness - measured
        limited = ad["true_peak"] + gain > opts.true_peak
        chain = f"volume={gain:.4f}dB" + (_limiter(opts) if limited else "")
        _write([*stem_in], f"[0:a]{chain}[o]", stem_out, channels=1)
        _, final, speech = level(["-i", str(stem_out)], None, 1)
        return MixResult(0.0, gain, limited, None, final, speech)

    prog = loudness(programme)
    ad = loudness(stem_in)
    if not math.isfinite(ad["integrated"]):
        raise LocomadError("the AD stem is silent: no cue was voiced")
    reference = prog["integrated"] if math.isfinite(prog["integrated"]) else opts.loudness
    ad_gain = reference + opts.ad_level - ad["integrated"]
    inputs = [*programme, *stem_in, *GATE_ARGS, "-i", str(envelope)]
    graph = _mix_graph(ad_gain)
    measured, m, _ = level(inputs, graph, 2)
    gain = opts.loudness - measured
    limited = m["true_peak"] + gain > opts.true_peak
    chain = f"volume={gain:.4f}dB" + (_limiter(opts) if limited else "")
    _write(inputs, f"{graph},{chain}[o]", mix_out, channels=2)
    _write(stem_in, f"[0:a]volume={ad_gain + gain:.4f}dB[o]", stem_out, channels=1)
    _, final, speech = level(["-i", str(mix_out)], None, 2)
    return MixResult(ad_gain, gain, limited, prog, final, speech)


def _mix_graph(ad_gain: float) -> str:
    """Inputs 0 programme, 1 raw stem, 2 gain curve → the ducked programme + AD, stereo.
    The mono AD goes to both channels at -3 dB each, so its loudness is unchanged."""
    stereo = "aformat=sample_fmts=fltp:channel_layouts=stereo"
    return (
        f"[0:a:0]aresample={SAMPLE_RATE},{stereo}[p];"
        f"[2:a]aresample={SAMPLE_RATE},pan=stereo|c0=c0|c1=c0,{stereo}[g];"
        "[p][g]amultiply[d];"
        f"[1:a]volume={ad_gain:.4f}dB,pan=stereo|c0=0.70711*c0|c1=0.70711*c0,{stereo}[a];"
        "[d][a]amix=inputs=2:normalize=0:duration=first"
    )


def _limiter(opts: MixOptions) -> str:
    limit = 10 ** ((opts.true_peak - 0.5) / 20)
    return f",alimiter=limit={limit:.5f}:level=0:latency=1"


def _write(inputs: list[str], graph: str, out: Path | None, channels: int) -> None:
    if out is None:
        return
    cmd = [*FFMPEG, "-v", "error", *inputs, "-filter_complex", graph, "-map", "[o]"]
    cmd += ["-ar", str(SAMPLE_RATE), "-ac", str(channels), "-c:a", "pcm_s16le"]
    _run([*cmd, "-f", "wav", str(out)], f"writing {out.name}", out)


def write_envelope(env: np.ndarray, out: Path) -> None:
    """Raw float32 little-endian samples (exact gains; ffmpeg reads them as f32le)."""
    env.astype("<f4").tofile(out)


# --- the described film ---------------------------------------------------------------------


def mux(
    video: Path,
    ad_audio: Path,
    text_track: Path,
    out: Path,
    opts: MixOptions,
    original_streams: int = 0,
    extended_video: Path | None = None,
    original_audio: Path | None = None,
) -> list[str]:
    """The described film: video (stream-copied from `video`, or the extended cut), the
    `original_streams` original audio streams (copied; for the extended cut the programme
    with its pauses, `original_audio`), the AD track and the text track.
    Returns warnings (one line each) about what could not be set."""
    lang = iso639(opts.language)
    mp4 = opts.container == "mp4"
    cmd = [*FFMPEG, "-v", "error", "-i", str(extended_video or video)]
    maps = ["-map", "0:v:0", "-c:v", "copy"]
    n_audio = 0
    if extended_video is not None and original_audio is not None:
        cmd += ["-i", str(original_audio)]  # the programme with its pauses
        maps += ["-map", "1:a:0", "-c:a:0", "aac", "-b:a:0", "192k"]
        n_audio = 1
    elif extended_video is None and original_streams > 0:
        maps += ["-map", "0:a"]  # every original audio stream, copied
        for i in range(original_streams):
            maps += [f"-c:a:{i}", "copy"]
        n_audio = original_streams
    cmd += ["-i", str(ad_audio), "-i", str(text_track)]
    ad_in = sum(1 for x in cmd if x == "-i") - 2
    text_in = ad_in + 1
    a = n_audio
    maps += ["-map", f"{ad_in}:a:0", f"-c:a:{a}", "aac", f"-b:a:{a}", "192k"]
    maps += [f"-metadata:s:a:{a}", f"language={lang}", f"-metadata:s:a:{a}", f"title={opts.title}"]
    for i in range(n_audio):
        maps += [f"-disposition:a:{i}", "default" if i == 0 else "0"]
    maps += [f"-disposition:a:{a}", "visual_impaired" if n_audio else "default+visual_impaired"]
    maps += ["-map", f"{text_in}:s:0", "-c:s", "mov_text" if mp4 else "webvtt"]
    maps += ["-metadata:s:s:0", f"language={lang}", "-metadata:s:s:0", f"title={opts.title} (text)"]
    maps += ["-disposition:s:0", "descriptions"]
    cmd += maps
    if mp4:
        cmd += ["-movflags", "+faststart"]
    cmd += ["-f", "mp4" if mp4 else "matroska", str(out)]
    _run(cmd, f"writing {out.name}", out)
    warnings = []
    if not mp4:
        tool = shutil.which("mkvpropedit")
        if tool is None:
            warnings.append(
                "mkvpropedit not found: the MKV's text track lacks the Matroska 'text "
                "descriptions' flag (install mkvtoolnix, or use --container mp4)"
            )
        else:
            edit = ["--edit", "track:s1", "--set", "flag-text-descriptions=1"]
            _run([tool, "-q", str(out), *edit], "mkvpropedit", out)
    return warnings
