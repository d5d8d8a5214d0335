"""Text to speech: a small engine interface, espeak-ng by default, piper when the user has a voice.

An engine turns a text into a WAV file at a given *engine rate*. Engines count rate in their
own units (espeak-ng's `-s` is nominally words per minute, but a short sentence comes out far
faster than that; piper has a length scale), so locomad never trusts the knob: `SpeechCache`
measures every result (silence trimmed) and aims the knob until the *heard* rate is the one
asked for. `--rate 170` means 170 words per minute of audio.

Every synthesized cue is kept in a cache folder (one 48 kHz mono WAV per engine, voice, engine
rate and text, named by their SHA-256), written atomically: a second run, or one resumed after a
crash, synthesizes nothing it already has.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from locomad_cli.utils import TEMP_SUFFIX, LocomadError, atomic_path, sweep_temps, temp_prefix

SAMPLE_RATE = 48000
"""Every cached cue is 48 kHz mono 16-bit: the rate of the AD stem."""
SILENCE_DB = -50
"""Leading and trailing audio below this level is trimmed before measuring."""
ESPEAK_INSTALL = "espeak-ng not found: install it (apt-get install espeak-ng)"


class NoSpeech(LocomadError):
    """The engine made nothing audible of a text (punctuation only, a stray symbol): that
    description is dropped, the others go on."""


class TTSEngine(Protocol):
    """What locomad needs from a speech engine."""

    name: str
    min_rate: int
    max_rate: int
    rate_hint: float
    """Engine rate per heard word per minute, roughly (the first guess)."""

    def identity(self) -> str:
        """Engine, version and voice: part of every cache key, so another voice never
        reuses this one's audio."""

    def synthesize(self, text: str, rate: int, out: Path) -> None:
        """Write `text` spoken at engine rate `rate` to the WAV file `out` (any sample rate)."""


@dataclass
class EspeakEngine:
    """espeak-ng (Debian package, offline). `voice` is an espeak-ng voice name (`en`, `en-us`,
    `de`, ...; `espeak-ng --voices` lists them)."""

    voice: str = "en"
    name: str = "espeak-ng"
    min_rate: int = 80
    max_rate: int = 450
    rate_hint: float = 0.8
    """A sentence of AD asked at -s 136 is heard at about 177 words per minute (median of the
    demo film's descriptions; 152-218 from one to the next)."""
    _version: str = field(default="", repr=False)

    def check(self) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise LocomadError(ESPEAK_INSTALL)
        out = subprocess.run([exe, "--version"], capture_output=True, text=True)
        self._version = (out.stdout or "").split("Data at")[0].strip()
        probe = subprocess.run([exe, "-v", self.voice, "-q", "x"], capture_output=True, text=True)
        if probe.returncode != 0:
            raise LocomadError(
                f"espeak-ng has no voice '{self.voice}' (espeak-ng --voices lists them)"
            )

    def identity(self) -> str:
        return f"{self.name} {self._version} voice={self.voice}"

    def synthesize(self, text: str, rate: int, out: Path) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise LocomadError(ESPEAK_INSTALL)
        # text on stdin: a description starting with '-' is never read as an option
        cmd = [exe, "-v", self.voice, "-s", str(rate), "-b", "1", "-w", str(out), "--stdin"]
        r = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True)
        if r.returncode != 0 or not out.is_file():
            msg = r.stderr.decode(errors="replace").strip() or f"exit code {r.returncode}"
            raise LocomadError(f"espeak-ng failed on '{text[:40]}': {msg}")


@dataclass
class PiperEngine:
    """piper (PyPI `piper-tts`) with a voice file the user supplies (`--voice
    path/to/voice.onnx`, its `voice.onnx.json` beside it): piper's voices come from the
    Hugging Face hub, which locomad never downloads from. The engine rate maps to piper's
    length scale as `NOMINAL / rate`; the cache measures what comes out, as for espeak-ng."""

    model: str
    name: str = "piper"
    min_rate: int = 60
    max_rate: int = 400
    rate_hint: float = 1.0
    nominal: int = 170
    _voice: object = field(default=None, repr=False)
    _digest: str = field(default="", repr=False)

    def check(self) -> None:
        path = Path(self.model).expanduser()
        if not self.model or path.suffix != ".onnx" or not path.is_file():
            raise LocomadError(
                f"--tts piper needs --voice PATH.onnx (a piper voice file, with PATH.onnx.json "
                f"beside it); '{self.model}' is not one"
            )
        if not Path(f"{path}.json").is_file():
            raise LocomadError(f"{path}.json not found: a piper voice comes with its JSON config")
        try:
            from piper import PiperVoice
        except ImportError:
            raise LocomadError("--tts piper needs piper-tts: pip install piper-tts") from None
        with open(path, "rb") as f:
            self._digest = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
        self._voice = PiperVoice.load(str(path))

    def identity(self) -> str:
        return f"{self.name} voice={Path(self.model).name} sha256_1mib={self._digest}"

    def synthesize(self, text: str, rate: int, out: Path) -> None:
        from piper import SynthesisConfig

        if self._voice is None:
            self.check()
        cfg = SynthesisConfig(length_scale=self.nominal / max(rate, 1))
        with wave.open(str(out), "wb") as w:
            self._voice.synthesize_wav(text, w, syn_config=cfg)


ENGINES = ("espeak-ng", "piper")


def make_engine(tts: str = "espeak-ng", voice: str | None = None) -> TTSEngine:
    """The engine named by `--tts`, checked to be usable (installed, voice present)."""
    if tts in ("espeak-ng", "espeak"):
        engine: TTSEngine = EspeakEngine(voice or "en")
    elif tts == "piper":
        engine = PiperEngine(voice or "")
    else:
        raise LocomadError(f"unknown --tts '{tts}' (choose {', '.join(ENGINES)})")
    engine.check()  # type: ignore[attr-defined]
    return engine


# --- measured speech ------------------------------------------------------------------------


@dataclass
class Speech:
    """One synthesized text, trimmed, at 48 kHz mono."""

    text: str
    path: Path
    duration: float
    """Seconds of audio (leading and trailing silence trimmed)."""
    engine_rate: int
    """The engine's own rate setting that produced it."""

    @property
    def words(self) -> int:
        return max(1, len(self.text.split()))

    @property
    def wpm(self) -> float:
        """Heard words per minute: words over the measured duration."""
        return self.words * 60.0 / max(self.duration, 1e-6)


def wav_duration(path: str | Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


@dataclass
class SpeechCache:
    """Synthesize once, keep the WAV, measure it; aim the engine's knob at a heard rate."""

    folder: Path
    engine: TTSEngine
    synthesized: int = 0
    """Texts synthesized by this object (the rest came from the folder)."""
    reused: int = 0
    _spoken: dict[tuple[str, float, float | None], Speech] = field(default_factory=dict)
    _swept: bool = False

    def path_for(self, text: str, rate: int) -> Path:
        key = f"{self.engine.identity()}\n{rate}\n{text}".encode()
        return self.folder / f"{hashlib.sha256(key).hexdigest()[:24]}.wav"

    def synth(self, text: str, rate: int) -> Speech:
        """`text` at engine rate `rate`, from the cache when it is there (and whole: an entry
        that does not read as a complete WAV, left by an older locomad or a power cut, is
        made again)."""
        rate = int(min(max(rate, self.engine.min_rate), self.engine.max_rate))
        path = self.path_for(text, rate)
        duration = _cached_duration(path)
        if duration is not None:
            self.reused += 1
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self._swept:  # what a killed run left (its temporaries only)
                sweep_temps(self.folder)
                sweep_temps(tempfile.gettempdir(), "tts")
                self._swept = True
            with tempfile.TemporaryDirectory(prefix=temp_prefix("tts"), suffix=TEMP_SUFFIX) as tmp:
                raw = Path(tmp) / "raw.wav"
                self.engine.synthesize(text, rate, raw)
                pcm = _trim_resample(raw)
            # Python writes the cached file itself: a full disk raises here (ffmpeg may exit
            # 0 with a cut file), and the temporary is removed; nothing lands under `path`
            with atomic_path(path) as out, wave.open(str(out), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SAMPLE_RATE)
                w.writeframes(pcm)
            duration = len(pcm) / 2 / SAMPLE_RATE
            self.synthesized += 1
        speech = Speech(text, path, duration, rate)
        if speech.duration <= 0:
            with contextlib.suppress(OSError):
                path.unlink()
            raise NoSpeech(f"{self.engine.name} made no sound of '{text[:40]}'")
        return speech

    def speak(self, text: str, wpm: float, at_most: float | None = None) -> Speech:
        """`text` heard at about `wpm` words per minute: a first guess from the engine's
        `rate_hint`, measured, and one correction when it is more than 4 % off. With
        `at_most`, a result heard faster than that is slowed down (the engine's knob lowered)
        until it is not."""
        key = (text, round(wpm, 2), at_most)
        if key in self._spoken:
            return self._spoken[key]
        # the first guess depends on nothing but the text and the rate, so a rerun (or a run
        # on an edited track) asks the engine for exactly what is in the cache
        s = self.synth(text, round(wpm * self.engine.rate_hint))
        if abs(s.wpm - wpm) > 0.04 * wpm:
            better = self.synth(text, round(s.engine_rate * wpm / s.wpm))
            if abs(better.wpm - wpm) < abs(s.wpm - wpm):
                s = better
        for _ in range(4):
            if at_most is None or s.wpm <= at_most or s.engine_rate <= self.engine.min_rate:
                break
            slower = min(s.engine_rate - 1, math.floor(s.engine_rate * at_most / s.wpm))
            s = self.synth(text, slower)
        self._spoken[key] = s
        return s


def _cached_duration(path: Path) -> float | None:
    """Seconds of a cached cue, None when it is missing or not a whole 48 kHz mono WAV."""
    try:
        with wave.open(str(path), "rb") as w:
            n = w.getnframes()
            ok = (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
            if not ok or len(w.readframes(n)) != 2 * n:
                return None
            return n / float(SAMPLE_RATE)
    except (OSError, EOFError, wave.Error):
        return None


def _trim_resample(src: Path) -> bytes:
    """Leading and trailing silence off, 48 kHz mono 16-bit samples (ffmpeg's silenceremove,
    run forwards and on the reversed audio so that pauses between words stay)."""
    trim = f"silenceremove=start_periods=1:start_threshold={SILENCE_DB}dB"
    af = f"{trim},areverse,{trim},areverse,aresample={SAMPLE_RATE}"
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(src), "-af", af]
    cmd += ["-ac", "1", "-c:a", "pcm_s16le", "-f", "s16le", "pipe:1"]
    try:
        r = subprocess.run(cmd, capture_output=True)
    except FileNotFoundError:
        raise LocomadError("ffmpeg not found: install it (apt-get install ffmpeg)") from None
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip()
        raise LocomadError(f"ffmpeg could not read the synthesized speech: {msg}")
    return r.stdout[: len(r.stdout) // 2 * 2]
