"""Draw a demo film's frames with PIL and encode them to H.264 with ffmpeg.

Flat shapes on flat backgrounds: each location has its own colours, pattern, seat and
surface; each character its body colour, outline, height, hair and hat; each prop its colour
and shape. Every AD slot's action is visible motion (walking in, falling over, a prop moving
from one hand to another), so the frames ground the description.

The soundtrack is the film's dialogue (the subtitle lines the world writes) voiced with
espeak-ng at the subtitle times, one voice per character, over a quiet noise bed: real
synthesized speech for the voice-activity detector to find (slots.py must keep AD off it).
Both are deterministic per film, and adding the sound leaves the H.264 stream byte for byte as
it was without it.

Hand-written because the demo needs a film whose every pixel and sample follows its script;
PIL does the drawing, espeak-ng the voices, ffmpeg (libx264, AAC) the encoding.
"""

from __future__ import annotations

import io
import math
import subprocess
import tempfile
import wave
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from locomad_cli.demo.world import LOCATIONS, PROPS, Film, Look
from locomad_cli.utils import LocomadError, atomic_path

WIDTH, HEIGHT = 160, 120
FEET_Y = 104
SEAT_X, SURFACE_X = 38, 124
SPOTS = (68, 98)
"""Standing places; staging stays inside the centre square that CLIP's crop keeps."""

_BACKGROUNDS: dict[int, np.ndarray] = {}


def _kitchen(d: ImageDraw.ImageDraw, floor_y: int) -> None:
    d.rectangle([0, 0, WIDTH, floor_y], fill=(232, 222, 170))
    for x in range(0, WIDTH, 16):
        for y in range(0, floor_y, 16):
            d.rectangle([x, y, x + 14, y + 14], outline=(205, 195, 140))
    for x in range(0, WIDTH, 10):
        for y in range(floor_y, HEIGHT, 10):
            c = (190, 190, 190) if (x // 10 + y // 10) % 2 else (70, 70, 70)
            d.rectangle([x, y, x + 9, y + 9], fill=c)


def _garden(d: ImageDraw.ImageDraw, floor_y: int) -> None:
    d.rectangle([0, 0, WIDTH, floor_y], fill=(150, 205, 250))
    d.ellipse([8, 6, 28, 26], fill=(255, 240, 120))
    d.rectangle([0, 78, WIDTH, floor_y], fill=(120, 180, 90))
    d.rectangle([0, floor_y, WIDTH, HEIGHT], fill=(90, 150, 60))
    d.rectangle([146, 40, 152, 100], fill=(110, 70, 30))
    d.ellipse([132, 14, 160, 50], fill=(30, 110, 40))


def _living_room(d: ImageDraw.ImageDraw, floor_y: int) -> None:
    d.rectangle([0, 0, WIDTH, floor_y], fill=(60, 120, 125))
    for x in range(0, WIDTH, 12):
        d.rectangle([x, 0, x + 5, floor_y], fill=(70, 135, 140))
    d.rectangle([64, 16, 100, 50], fill=(200, 230, 250), outline=(240, 240, 240), width=3)
    d.rectangle([0, floor_y, WIDTH, HEIGHT], fill=(120, 80, 50))


def _street(d: ImageDraw.ImageDraw, floor_y: int) -> None:
    d.rectangle([0, 0, WIDTH, floor_y], fill=(150, 80, 60))
    for y in range(0, floor_y, 8):
        off = 0 if (y // 8) % 2 else 8
        for x in range(-off, WIDTH, 16):
            d.rectangle([x, y, x + 15, y + 7], outline=(110, 60, 45))
    d.rectangle([0, floor_y, WIDTH, HEIGHT], fill=(80, 80, 85))
    for x in range(0, WIDTH, 24):
        d.rectangle([x, 111, x + 12, 113], fill=(240, 240, 240))
    d.rectangle([150, 20, 153, 100], fill=(30, 30, 30))
    d.ellipse([144, 12, 159, 24], fill=(255, 230, 120))


def _office(d: ImageDraw.ImageDraw, floor_y: int) -> None:
    d.rectangle([0, 0, WIDTH, floor_y], fill=(200, 210, 225))
    d.rectangle([56, 10, 104, 54], fill=(250, 250, 250))
    for y in range(12, 54, 5):
        d.line([56, y, 104, y], fill=(160, 170, 190))
    d.rectangle([0, floor_y, WIDTH, HEIGHT], fill=(90, 100, 120))


def _beach(d: ImageDraw.ImageDraw, floor_y: int) -> None:
    d.rectangle([0, 0, WIDTH, floor_y], fill=(120, 190, 240))
    d.rectangle([0, 70, WIDTH, 86], fill=(30, 100, 180))
    d.rectangle([0, 86, WIDTH, HEIGHT], fill=(235, 215, 150))
    d.polygon([(130, 30), (160, 44), (100, 44)], fill=(230, 60, 60))
    d.line([130, 44, 130, 100], fill=(80, 60, 40), width=2)


_SCENERY = {
    "kitchen": _kitchen,
    "garden": _garden,
    "living room": _living_room,
    "street": _street,
    "office": _office,
    "beach": _beach,
}
"""Each location's wall or sky and floor, drawn above the floor line `floor_y`."""


def _background(loc: int) -> np.ndarray:
    """The location's static picture: wall/sky, floor, seat and surface."""
    if loc in _BACKGROUNDS:
        return _BACKGROUNDS[loc]
    name = LOCATIONS[loc].name
    img = Image.new("RGB", (WIDTH, HEIGHT))
    d = ImageDraw.Draw(img)
    _SCENERY[name](d, floor_y=100)
    # seat (left) and surface (right): their shapes differ per place only in colour
    seat = {
        "kitchen": (150, 90, 40),
        "garden": (110, 70, 40),
        "living room": (170, 40, 60),
        "street": (40, 90, 50),
        "office": (40, 40, 40),
        "beach": (250, 250, 250),
    }[name]
    d.rectangle([SEAT_X - 11, 90, SEAT_X + 11, 94], fill=seat)
    d.rectangle([SEAT_X - 10, 94, SEAT_X - 8, FEET_Y], fill=seat)
    d.rectangle([SEAT_X + 8, 94, SEAT_X + 10, FEET_Y], fill=seat)
    surf = {
        "kitchen": (120, 70, 30),
        "garden": (160, 150, 140),
        "living room": (90, 50, 30),
        "street": (170, 130, 70),
        "office": (110, 90, 70),
        "beach": (60, 150, 220),
    }[name]
    d.rectangle([SURFACE_X - 14, 82, SURFACE_X + 14, FEET_Y], fill=surf)
    _BACKGROUNDS[loc] = np.asarray(img).copy()
    return _BACKGROUNDS[loc]


@dataclass
class Pose:
    """Where one character is and what its body does at one instant."""

    x: float
    visible: bool = True
    angle: float = 0.0
    """Degrees; 90 = lying on the floor."""
    sit: float = 0.0
    """0 standing … 1 seated."""
    lift: float = 0.0
    """Pixels above the floor (jumps)."""
    arm: float = 0.0
    """0 down … 1 raised (wave)."""
    stride: float = 0.0
    """Walking phase in radians (legs swing)."""


@dataclass
class State:
    loc: int = 0
    poses: dict[int, Pose] = field(default_factory=dict)
    holder: dict[int, int | None] = field(default_factory=dict)
    """Prop → character holding it (None = lying on the surface). Absent = not in view."""
    rain: bool = False
    light: float = 1.0


def _draw_character(d: ImageDraw.ImageDraw, look: Look, p: Pose, bob: float = 0.0) -> tuple:
    """Draw one character; return its hand position (for a held prop)."""
    h = look.height
    r = h * 0.13
    leg = h * 0.3
    w = h * 0.36 if look.shape != "square" else h * 0.45
    ang = math.radians(p.angle)
    cx, cy = p.x, FEET_Y - p.lift
    drop = p.sit * leg * 0.45
    """Seated: the hips sink onto the seat and the thighs point forward."""

    def T(u: float, v: float) -> tuple[float, float]:
        """Local (u right, v up from the feet) → image pixels, rotated about the feet."""
        v_eff = v - (drop if v >= leg - 0.5 else 0.0)
        x = u * math.cos(ang) + v_eff * math.sin(ang)
        y = -u * math.sin(ang) + v_eff * math.cos(ang)
        return (cx + x, cy - y + bob)

    swing = math.sin(p.stride) * 4
    leg_col = (40, 40, 50)
    if p.sit > 0.5:
        for u in (-2, 2):
            d.line([T(u, leg), T(u + 9, leg - drop)], fill=leg_col, width=2)
            d.line([T(u + 9, leg - drop), T(u + 9, 0)], fill=leg_col, width=2)
    else:
        d.line([T(-2, leg), T(-2 - swing, 0)], fill=leg_col, width=2)
        d.line([T(2, leg), T(2 + swing, 0)], fill=leg_col, width=2)
    top = h - 2 * r
    if look.shape == "dress":
        body = [T(-w * 0.3, top), T(w * 0.3, top), T(w * 0.7, leg - 2), T(-w * 0.7, leg - 2)]
    else:
        body = [T(-w / 2, top), T(w / 2, top), T(w / 2, leg), T(-w / 2, leg)]
    d.polygon(body, fill=look.body)
    shoulder = top - 2
    hand_down = T(w / 2 + 2, leg + 2)
    hand_up = T(w / 2 + 5, top + 9)
    hand = (
        hand_down[0] + (hand_up[0] - hand_down[0]) * p.arm,
        hand_down[1] + (hand_up[1] - hand_down[1]) * p.arm,
    )
    d.line([T(w / 2, shoulder), hand], fill=look.body, width=2)
    d.line([T(-w / 2, shoulder), T(-w / 2 - 2, leg + 2)], fill=look.body, width=2)
    hx, hy = T(0, top + r)
    d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=(230, 190, 150))
    d.pieslice([hx - r, hy - r, hx + r, hy + r], 180 - p.angle, 360 - p.angle, fill=look.hair)
    if look.hat:
        a, b = T(-r - 1, top + 2 * r - 1), T(r + 1, top + 2 * r + 4)
        d.rectangle(
            [min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])], fill=(25, 25, 25)
        )
    return hand


def _draw_prop(d: ImageDraw.ImageDraw, prop: int, x: float, y: float) -> None:
    """A prop whose bottom centre is at (x, y)."""
    pr = PROPS[prop]
    c = pr.color
    if pr.shape == "key":
        d.ellipse([x - 6, y - 7, x, y - 1], outline=c, width=2)
        d.line([x, y - 4, x + 7, y - 4], fill=c, width=2)
        d.line([x + 6, y - 4, x + 6, y - 1], fill=c, width=2)
    elif pr.shape == "cup":
        d.polygon([(x - 4, y - 9), (x + 4, y - 9), (x + 3, y), (x - 3, y)], fill=c)
        d.arc([x + 2, y - 7, x + 7, y - 2], -90, 90, fill=c, width=2)
    elif pr.shape == "book":
        d.rectangle([x - 6, y - 8, x + 6, y], fill=c)
        d.line([x - 4, y - 8, x - 4, y], fill=(60, 40, 20))
    elif pr.shape == "bottle":
        d.rectangle([x - 3, y - 9, x + 3, y], fill=c)
        d.rectangle([x - 1, y - 13, x + 1, y - 9], fill=c)
    elif pr.shape == "letter":
        d.rectangle([x - 6, y - 8, x + 6, y], fill=c, outline=(120, 120, 120))
        d.line([x - 6, y - 8, x, y - 3, x + 6, y - 8], fill=(120, 120, 120))
    else:
        d.ellipse([x - 5, y - 10, x + 5, y], fill=c)


def _ease(a: float) -> float:
    a = min(max(a, 0.0), 1.0)
    return a * a * (3 - 2 * a)


def _lerp(a: float, b: float, w: float) -> float:
    return a + (b - a) * w


class _Stage:
    """Replays a film's actions to find each slot's start and end state, and animates in
    between. Kept beside the drawing code: it only decides positions, never words."""

    def __init__(self, film: Film) -> None:
        self.film = film
        self.state = State()
        self.keys: list[tuple[float, float, State, State, object]] = []
        for slot in film.slots:
            s0 = self._copy(self.state)
            s1, anim = self._apply(slot.action, s0)
            self.keys.append((slot.start, slot.end, s0, s1, anim))
            self.state = s1

    @staticmethod
    def _copy(s: State) -> State:
        return State(
            s.loc, {c: replace(p) for c, p in s.poses.items()}, dict(s.holder), s.rain, s.light
        )

    def _free_spot(self, s: State) -> float:
        taken = [p.x for p in s.poses.values() if p.visible]
        for x in SPOTS:
            if all(abs(x - t) > 12 for t in taken):
                return float(x)
        return float(SPOTS[0] - 16)

    def _apply(self, a, s0: State):
        s = self._copy(s0)
        kind, c = a.kind, a.actor
        anim = kind
        if kind == "establish":
            # a cut: only carried props travel (with their holder); this scene's prop lies ready
            s = State(loc=a.location)
            s.holder = {p: h for p, h in s0.holder.items() if h is not None}
            if a.prop is not None:
                s.holder[a.prop] = None
            return s, "cut"
        if kind == "enter":
            spot = self._free_spot(s)
            s0.poses[c] = Pose(x=-14.0 if spot < WIDTH / 2 - 10 else WIDTH + 14.0)
            s.poses[c] = Pose(x=spot)
        elif kind == "leave":
            p = s.poses[c]
            s.poses[c] = Pose(x=-14.0 if p.x < WIDTH / 2 else WIDTH + 14.0, visible=False)
        elif kind in ("walk", "pickup", "putdown"):
            s.poses[c] = replace(s.poses[c], x=float(SURFACE_X - 20))
            if kind == "pickup":
                s.holder[a.prop] = c
            elif kind == "putdown":
                s.holder[a.prop] = None
        elif kind == "give":
            o = s.poses[a.other]
            x = o.x - 16 if s.poses[c].x < o.x else o.x + 16
            s.poses[c] = replace(s.poses[c], x=float(x))
            s.holder[a.prop] = a.other
        elif kind == "meet":
            o = s.poses[a.other]
            mid = (o.x + s.poses[c].x) / 2
            left = s.poses[c].x < o.x
            s.poses[c] = replace(s.poses[c], x=mid - 7 if left else mid + 7)
            s.poses[a.other] = replace(o, x=mid + 7 if left else mid - 7)
        elif kind == "sit":
            s.poses[c] = replace(s.poses[c], x=float(SEAT_X), sit=1.0)
        elif kind == "stand":
            s.poses[c] = replace(s.poses[c], x=float(SEAT_X + 14), sit=0.0)
        elif kind == "fall":
            s.poses[c] = replace(s.poses[c], angle=90.0)
        elif kind == "getup":
            s.poses[c] = replace(s.poses[c], angle=0.0)
        elif kind == "rain":
            s.rain = True
        self._separate(s, c)
        return s, anim

    def _separate(self, s: State, mover: int | None) -> None:
        """Keep characters who did not move from standing inside each other."""
        for c, p in s.poses.items():
            if c == mover or not p.visible:
                continue
            for o, q in s.poses.items():
                if o != c and q.visible and abs(p.x - q.x) < 10 and o == mover:
                    p.x = float(min(max(p.x + (14 if p.x >= q.x else -14), 24), 136))

    def at(self, t: float) -> State:
        """The state at time t: interpolated inside a slot, held still between slots."""
        keys = self.keys
        if not keys or t < keys[0][0]:
            return keys[0][2] if keys else State()
        for i, (t0, t1, s0, s1, anim) in enumerate(keys):
            nxt = keys[i + 1][0] if i + 1 < len(keys) else math.inf
            if t0 <= t < t1:
                return self._tween(s0, s1, anim, (t - t0) / (t1 - t0), t - t0)
            if t1 <= t < nxt:
                return s1
        return keys[-1][3]

    def _tween(self, s0: State, s1: State, anim: object, a: float, dt: float) -> State:
        if anim == "cut":
            return s1
        w = _ease(a)
        s = self._copy(s1)
        for c, p1 in s1.poses.items():
            p0 = s0.poses.get(c, p1)
            moving = abs(p1.x - p0.x) > 1
            vis = p0.visible or p1.visible
            if anim == "leave" and not p1.visible and a < 0.97:
                vis = True
            s.poses[c] = Pose(
                x=_lerp(p0.x, p1.x, w),
                visible=vis,
                angle=_lerp(p0.angle, p1.angle, _ease(a * 2)),
                sit=_lerp(p0.sit, p1.sit, _ease(a * 1.5 - 0.5)),
                stride=dt * 12 if moving and 0.02 < a < 0.98 else 0.0,
            )
        s.holder = dict(s1.holder)
        # a prop changes hands in the last third of its slot
        if a < 0.66:
            s.holder = dict(s0.holder)
        if anim == "lights":
            s.light = 0.55 + 0.45 * abs(math.cos(dt * 9))
        return s


def _frame(film: Film, stage: _Stage, t: float) -> np.ndarray:
    s = stage.at(t)
    slot = next((x for x in film.slots if x.start <= t < x.end), None)
    bg = _background(s.loc)
    img = Image.fromarray(bg.copy())
    d = ImageDraw.Draw(img)
    speaking = next((ln for ln in film.lines if ln.start <= t < ln.end), None)
    hands: dict[int, tuple] = {}
    for c, p in sorted(s.poses.items(), key=lambda kv: kv[1].x):
        if not p.visible:
            continue
        pose = p
        if slot is not None and slot.action.actor == c:
            a = (t - slot.start) / max(slot.end - slot.start, 1e-6)
            if slot.action.kind == "jump":
                pose = replace(p, lift=abs(math.sin(a * math.pi * 3)) * 10)
            elif slot.action.kind == "wave":
                pose = replace(p, arm=0.5 + 0.5 * abs(math.sin(a * math.pi * 4)))
        bob = 0.0
        if speaking is not None and speaking.speaker == c:
            bob = -1.0 if int(t * 6) % 2 else 0.0
        hands[c] = _draw_character(d, film.cast[c].look, pose, bob)
    lying = 0
    for prop, h in s.holder.items():
        if h is None:
            _draw_prop(d, prop, SURFACE_X - 6 + 12 * (lying % 2), 82)
            lying += 1
        elif h in hands:
            _draw_prop(d, prop, hands[h][0] + 3, hands[h][1] + 4)
    arr = np.asarray(img)
    if s.rain:
        arr = arr.copy()
        phase = int(t * 30)
        for k in range(0, WIDTH, 9):
            y = (k * 7 + phase * 4) % HEIGHT
            arr[y : y + 5, k] = (200, 210, 255)
    if s.light < 1.0:
        arr = (arr.astype(np.float32) * s.light).astype(np.uint8)
    return arr


def film_frames(film: Film, fps: float) -> np.ndarray:
    """All frames of the film as uint8 [N, H, W, 3] (N = duration × fps)."""
    stage = _Stage(film)
    n = int(round(film.duration * fps))
    return np.stack([_frame(film, stage, i / fps) for i in range(n)])


SOUND_RATE = 22050
"""espeak-ng's own rate: the voices are used as it writes them, without resampling."""
BED_DBFS = -50.0
"""RMS level of the ambience bed: audible in a quiet room, far below any voice."""
BASE_WPM = 165
MAX_WPM = 320


@dataclass
class Soundtrack:
    """A film's mono soundtrack and where each line of dialogue is really heard."""

    samples: np.ndarray
    """float32 in [-1, 1], SOUND_RATE per second, as long as the video."""
    rate: int
    voiced: list[tuple[float, float]]
    """(start, end) in seconds of each line's audible speech, in film order: the truth that
    the voice-activity detector is measured against."""


def _voice(film: Film, speaker: int | None) -> tuple[str, int]:
    """(espeak-ng voice, pitch 0-99) of a speaker: a look keeps its voice in every film."""
    if speaker is None:
        return "en+m2", 45
    look = film.cast[speaker].look
    variant = {
        "man": "m3",
        "old man": "m1",
        "boy": "m4",
        "woman": "f2",
        "girl": "f4",
    }[look.noun]
    pitch = 30 + (zlib.crc32(look.garment.encode()) % 40)
    if look.noun in ("boy", "girl"):
        pitch = min(99, pitch + 30)
    return f"en+{variant}", pitch


def speak(text: str, voice: str = "en+m3", pitch: int = 50, wpm: int = BASE_WPM) -> np.ndarray:
    """espeak-ng's speech for `text` at SOUND_RATE, float32, leading and trailing silence cut."""
    cmd = ["espeak-ng", "--stdout", "-v", voice, "-p", str(pitch), "-s", str(wpm), text]
    try:
        proc = subprocess.run(cmd, capture_output=True)
    except FileNotFoundError:
        raise LocomadError(
            "espeak-ng is not installed (apt-get install espeak-ng): the demo films' dialogue "
            "is voiced with it"
        ) from None
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        msg = proc.stderr.decode(errors="replace").strip() or "no audio"
        raise LocomadError(f"espeak-ng could not voice {text!r}: {msg}")
    with wave.open(io.BytesIO(proc.stdout)) as w:
        if w.getframerate() != SOUND_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise LocomadError(f"espeak-ng wrote unexpected audio ({w.getparams()})")
        pcm = w.readframes(w.getnframes())
    x = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(x) > 1e-3)
    return x[loud[0] : loud[-1] + 1] if len(loud) else x[:0]


def _bed(film: Film, n: int) -> np.ndarray:
    """Quiet pink noise (room tone), the same for the same film: seeded by its seed and name."""
    rng = np.random.default_rng([film.seed, zlib.crc32(film.name.encode())])
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    x *= 10 ** (BED_DBFS / 20) / max(float(np.sqrt(np.mean(x**2))), 1e-12)
    return x.astype(np.float32)


def film_soundtrack(film: Film, fps: float) -> Soundtrack:
    """Every dialogue line voiced at its subtitle's start, sped up (up to MAX_WPM) when it
    would outlast its subtitle, over the noise bed; as long as the film's `fps` video."""
    n = int(round(int(round(film.duration * fps)) / fps * SOUND_RATE))
    out = _bed(film, n)
    voiced = []
    for line in film.lines:
        voice, pitch = _voice(film, line.speaker)
        room = line.end - line.start
        speech = speak(line.text, voice, pitch)
        if len(speech) > room * SOUND_RATE:
            wpm = min(MAX_WPM, math.ceil(BASE_WPM * len(speech) / (room * SOUND_RATE)) + 5)
            speech = speak(line.text, voice, pitch, wpm)
        a = int(round(line.start * SOUND_RATE))
        speech = speech[: max(0, min(len(speech), int(room * SOUND_RATE), n - a))]
        if len(speech) == 0:
            continue
        out[a : a + len(speech)] += speech
        voiced.append((a / SOUND_RATE, (a + len(speech)) / SOUND_RATE))
    return Soundtrack(np.clip(out, -1.0, 1.0), SOUND_RATE, voiced)


def _write_wav(sound: Soundtrack, path: Path) -> None:
    pcm = np.round(np.clip(sound.samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sound.rate)
        w.writeframes(pcm.tobytes())


def encode_mp4(
    frames: np.ndarray,
    fps: float,
    path: Path,
    crf: int = 30,
    sound: Soundtrack | None = None,
) -> Path:
    """Pipe raw RGB frames into ffmpeg's libx264, with `sound` as an AAC track when given;
    single-threaded and bit-exact so the bytes depend on the frames and samples only. The
    video options are the same with or without sound, so is the H.264 stream."""
    n, h, w, _ = frames.shape
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        f"{fps:g}",
        "-i",
        "-",
    ]
    with tempfile.TemporaryDirectory(prefix="locomad-sound-") as tmpdir:
        if sound is not None:
            wav = Path(tmpdir) / "sound.wav"
            _write_wav(sound, wav)
            cmd += ["-i", str(wav), "-map", "0:v", "-map", "1:a"]
        cmd += [
            "-c:v",
            "libx264",
            "-preset",
            "medium",
            "-crf",
            str(crf),
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
            "-g",
            str(int(fps * 5)),
        ]
        if sound is not None:
            cmd += ["-c:a", "aac", "-b:a", "24k", "-ac", "1", "-flags:a", "+bitexact"]
        cmd += [
            "-movflags",
            "+faststart",
            "-fflags",
            "+bitexact",
            "-flags:v",
            "+bitexact",
            "-map_metadata",
            "-1",
        ]
        _run_ffmpeg(cmd, frames, path)
    return path


def _run_ffmpeg(cmd: list[str], frames: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        try:
            proc = subprocess.run(
                cmd + ["-f", "mp4", str(tmp)], input=frames.tobytes(), capture_output=True
            )
        except FileNotFoundError:
            raise LocomadError("ffmpeg is not installed (apt-get install ffmpeg)") from None
        if proc.returncode != 0:
            msg = proc.stderr.decode(errors="replace").strip().splitlines()
            raise LocomadError(f"ffmpeg could not encode {path}: {msg[-1] if msg else '?'}")
