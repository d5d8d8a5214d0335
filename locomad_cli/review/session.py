"""What the review page does to one film's track, as plain functions over the TrackStore: the
cue list with its dialogue and fit, edits checked against dialogue and neighbours, one cue
re-voiced with voice's own fitting, n-best alternatives from the card that wrote the track,
and the export (`voice` on the saved track). The web layer (server.py) only translates."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locomad_cli.lock import lock_path
from locomad_cli.review.store import (
    NUDGE,
    STALE,
    NotFound,
    ReviewError,
    Snapshot,
    StaleVersion,
    TrackStore,
    check_times,
)
from locomad_cli.utils import LocomadError

log = logging.getLogger(__name__)


@dataclass
class ReviewOptions:
    """The server's settings: what `locomad review` passes."""

    ad: str | None = None
    """The AD track; default FILM.ad.json beside the film."""
    overrides: list[str] = field(default_factory=list)
    """`--set` for the card that regenerates (e.g. llm.num_beams=3 for n-best)."""
    device: str = "cpu"
    who: str | None = None


def check_regenerate_settings(track: dict[str, Any], opts: ReviewOptions) -> None:
    """The card that Regenerate loads (the track's, with --set) and --device, checked when the
    review starts: a typo in either is said in one line then, not on the first Regenerate
    after the page has opened. A card that cannot be found (a user's card moved) only warns:
    the review works without it, and Regenerate says so when asked."""
    from locomad_cli.card import load_card

    name = track.get("card")
    if name:
        try:
            load_card(name)
        except LocomadError as e:
            log.warning("Regenerate will not work: %s", e)
        else:
            load_card(name, opts.overrides)  # a bad --set ends the command here
    _check_device(opts.device)


def _check_device(device: str) -> None:
    """--device as describe checks it (torch only imported for a device other than the CPU)."""
    if device == "cpu":
        return
    from locomad_cli.utils import resolve_device

    resolve_device(device)


class Review:
    """One film under review."""

    def __init__(self, video: str | Path, opts: ReviewOptions | None = None):
        from locomad_cli.features.video import probe
        from locomad_cli.voice.fit import VoiceOptions, load_track

        self.opts = opts or ReviewOptions()
        self.video = Path(video).resolve()
        if not self.video.is_file():
            raise LocomadError(f"{video}: no such video file")
        self.folder = self.video.parent
        ad = (
            Path(self.opts.ad)
            if self.opts.ad
            else self.video.with_name(f"{self.video.stem}.ad.json")
        )
        self.info = probe(self.video)
        load_track(ad, self.video, self.info.duration)  # refused now, in voice's words
        self.store = TrackStore(ad, self.opts.who, lock_path(ad.resolve().parent, self.video.stem))
        check_regenerate_settings(self.store.read().track, self.opts)
        self.voice_opts = VoiceOptions(ad=str(self.store.ad), progress=False)
        self._engine = None
        self._model = None
        self._model_lock = threading.Lock()
        self._no_subtitles = False
        self._subtitles = self._read_subtitles()

    # --- reading ------------------------------------------------------------------------

    def _read_subtitles(self) -> list[Any]:
        from locomad_cli.tracks.readers import read_cues

        track = self.store.read().track
        named = track.get("subtitles_file")
        if not named:
            return []
        for p in (Path(named), self.store.ad.parent / Path(named).name):
            if p.is_file():
                self.voice_opts.subs = str(p)  # found once, not looked for on every request
                try:
                    return [c for c in read_cues(p) if c.text]
                except LocomadError as e:
                    log.warning("%s", e)
                    return []
        log.warning(
            "the track's subtitles %s are not found: cues are kept off the dialogue the track "
            "itself records only",
            named,
        )
        self._no_subtitles = True
        return []

    def dialogue(self, track: dict[str, Any]) -> list[tuple[float, float, str]]:
        """Dialogue a cue keeps off, as voice sees it (the subtitles and the speech the
        soundtrack holds), each span with its words where the subtitles have them."""
        from locomad_cli.voice.fit import dialogue_of

        if self._no_subtitles:  # said once at start
            track = {**track, "subtitles_file": None}
        spans = dialogue_of(track, self.voice_opts, self.store.ad)
        out = []
        for a, b in spans:
            words = " ".join(c.text for c in self._subtitles if c.start < b and a < c.end)
            out.append((a, b, words or "speech in the soundtrack"))
        return out

    def view(self, snap: Snapshot | None = None) -> dict[str, Any]:
        """What the page shows."""
        snap = snap or self.store.read()
        track = snap.track
        done, undone = self.store.history()
        spans = [(a, b) for a, b, _ in self.dialogue(track)]
        cues = []
        for s in sorted(track["slots"], key=lambda s: (float(s["start"]), float(s["end"]))):
            start, end = float(s["start"]), float(s["end"])
            before = [c for c in self._subtitles if c.end <= start + 1e-3]
            after = [c for c in self._subtitles if c.start >= end - 1e-3]
            cues.append(
                {
                    "index": s["index"],
                    "start": round(start, 3),
                    "end": round(end, 3),
                    "text": s.get("text", ""),
                    "approved": bool(s.get("approved")),
                    "edited": bool(s.get("edited")),
                    "dialogue_before": _cue(before[-1]) if before else None,
                    "dialogue_after": _cue(after[0]) if after else None,
                    "fit": _fit_view(s.get("voice"), spans),
                }
            )
        voiced = self.folder / f"{self.video.stem}.ad-mix.wav"
        return {
            "film": self.video.name,
            "duration": round(self.info.duration, 3),
            "version": snap.version,
            "cues": cues,
            "can_undo": bool(done),
            "can_redo": bool(undone),
            "voiced": "voice" in track,
            "mix": voiced.is_file(),
            "nudge": NUDGE,
            "summary": (track.get("voice") or {}).get("summary"),
        }

    def _at(self, version: str) -> Snapshot:
        """The track, refused when it is no longer at `version`: an edit is checked against
        the very state it will be applied to (the store checks again under its lock)."""
        snap = self.store.read()
        if snap.version != version:
            raise StaleVersion(STALE)
        return snap

    def slot(self, snap: Snapshot, index: int) -> dict[str, Any]:
        s = next((s for s in snap.track["slots"] if s.get("index") == index), None)
        if s is None:
            raise NotFound(f"no cue {index} in the track")
        return s

    # --- edits --------------------------------------------------------------------------

    def edit(
        self,
        version: str,
        index: int,
        text: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> Snapshot:
        """New text and/or times for one cue: the measured fit no longer holds (dropped
        until it is re-voiced), the model's other candidates are no longer alternatives of
        the reviewer's text."""
        snap = self._at(version)
        old = self.slot(snap, index)
        new = dict(old)
        if text is not None:
            text = " ".join(text.split())
            if not text:
                raise ReviewError("a description cannot be empty (delete the cue instead)")
            if text != old.get("text"):
                new["text"] = text
                new["candidates"] = [{"text": text, "score": None}]
        if start is not None or end is not None:
            a = float(old["start"]) if start is None else round(float(start), 3)
            b = float(old["end"]) if end is None else round(float(end), 3)
            check_times(
                snap.track,
                index,
                a,
                b,
                self.dialogue(snap.track),
                self.info.duration,
                (float(old["start"]), float(old["end"])),
            )
            new["start"], new["end"] = a, b
        if new == old:
            return snap
        new["edited"] = True
        new.pop("voice", None)
        return self.store.change(version, "edit", index, new)

    def approve(self, version: str, index: int, approved: bool = True) -> Snapshot:
        snap = self._at(version)
        new = {**self.slot(snap, index), "approved": bool(approved)}
        return self.store.change(version, "approve" if approved else "unapprove", index, new)

    def delete(self, version: str, index: int) -> Snapshot:
        snap = self._at(version)
        self.slot(snap, index)
        return self.store.change(version, "delete", index, None)

    def add(self, version: str, start: float, end: float, text: str) -> Snapshot:
        snap = self._at(version)
        text = " ".join(str(text).split())
        if not text:
            raise ReviewError("a new cue needs a description")
        start, end = round(float(start), 3), round(float(end), 3)
        check_times(snap.track, None, start, end, self.dialogue(snap.track), self.info.duration)
        slot = {
            "start": start,
            "end": end,
            "text": text,
            "source": "review",
            "candidates": [{"text": text, "score": None}],
            "edited": True,
        }
        return self.store.change(version, "add", None, slot)

    def undo(self, version: str) -> Snapshot:
        return self.store.undo(version)

    def redo(self, version: str) -> Snapshot:
        return self.store.redo(version)

    # --- voice --------------------------------------------------------------------------

    def _cache(self):
        from locomad_cli.voice.tts import SpeechCache, make_engine

        if self._engine is None:
            o = self.voice_opts
            self._engine = make_engine(o.tts, o.voice or o.mix.language)
        return SpeechCache(self.folder / f"{self.video.stem}.voice-cache", self._engine)

    def fit(self, track: dict[str, Any], slot: dict[str, Any], texts: list[str]):
        """voice's fitting ladder for one slot (the same window, rates and cache)."""
        from locomad_cli.voice.fit import fit_description, speakable_window

        spans = [(a, b) for a, b, _ in self.dialogue(track)]
        window = speakable_window(float(slot["start"]), float(slot["end"]), spans)
        return fit_description(texts, window, self._cache(), self.voice_opts)

    def revoice(self, version: str, index: int) -> Snapshot:
        """Speak one cue as `voice` would (its text first, the model's other candidates
        as voice's substitutes), and keep the measured record in the slot."""
        from locomad_cli.voice.fit import Voiced, _voice_record

        snap = self._at(version)
        old = self.slot(snap, index)
        texts = [old.get("text", "").strip()]
        texts += [c.get("text", "").strip() for c in old.get("candidates") or []][1:]
        fit = self.fit(snap.track, old, texts)
        stem = f"{self.video.stem}.ad.wav"
        record = _voice_record(Voiced(old, fit, fit.window[0]), [], stem)
        return self.store.change(version, "revoice", index, {**old, "voice": record})

    def speech(self, index: int) -> Path:
        """The WAV of a cue as last voiced (by voice or by a re-voice)."""
        snap = self.store.read()
        v = self.slot(snap, index).get("voice") or {}
        if "text" not in v or "engine_rate" not in v:
            raise NotFound(f"cue {index} has not been voiced")
        path = self._cache().path_for(v["text"], int(v["engine_rate"]))
        if not path.is_file():
            raise NotFound(f"the speech of cue {index} is no longer in the voice cache")
        return path

    # --- the model ----------------------------------------------------------------------

    def alternatives(self, index: int, count: int = 5) -> list[dict[str, Any]]:
        """The card's n-best for one slot, with earlier (and approved) cues as the context
        proposal (the recurrent setting), each with its measured fit."""
        from locomad_cli.review.regenerate import nbest_for_slot

        snap = self.store.read()
        slot = self.slot(snap, index)
        with self._model_lock:
            texts = nbest_for_slot(self, snap.track, slot)
        out = []
        for rank, (text, score) in enumerate(texts[:count]):
            fit = self.fit(snap.track, slot, [text])
            out.append({"rank": rank, "text": text, "score": score, "fit": _fit_obj(fit)})
        return out

    # --- export -------------------------------------------------------------------------

    def export(self, version: str) -> tuple[Snapshot, list[str]]:
        """SRT, WebVTT, JSON and voice's deliverables from the saved track: `locomad voice
        FILM --ad FILM.ad.json` with its defaults."""
        from locomad_cli.voice.fit import VoiceOptions, voice

        with self.store.exclusive(version):
            opts = VoiceOptions(ad=str(self.store.ad), formats="srt,vtt,json", progress=False)
            _, paths = voice(self.video, opts, lock=False)  # exclusive() holds the film's lock
        return self.store.read(), [p.name for p in paths]

    def descriptions_vtt(self) -> str:
        """The track's cues as WebVTT (kind="descriptions"), through the project's writer."""
        import io

        from locomad_cli.tracks.writers import WriteVTT

        track = self.store.read().track
        buf = io.StringIO()
        WriteVTT(self.folder).write_result(track, buf)
        return buf.getvalue()


def _cue(c) -> dict[str, Any]:
    return {"start": round(c.start, 3), "end": round(c.end, 3), "text": c.text}


def _fit_view(
    v: dict[str, Any] | None, dialogue: list[tuple[float, float]]
) -> dict[str, Any] | None:
    if not v:
        return None
    out = {"decision": v.get("decision"), "window": v.get("window")}
    for k in ("duration", "wpm", "start", "end", "reason", "text", "overrun"):
        if k in v:
            out[k] = v[k]
    if "start" in v and "end" in v:
        a, b = float(v["start"]), float(v["end"])
        out["over_dialogue"] = round(sum(max(0.0, min(b, e) - max(a, s)) for s, e in dialogue), 3)
    out["label"] = _label(out)
    return out


def _fit_obj(fit) -> dict[str, Any]:
    out: dict[str, Any] = {"decision": fit.decision, "window": [*fit.window]}
    if fit.speech is not None:
        out.update(duration=round(fit.speech.duration, 3), wpm=round(fit.speech.wpm, 1))
    else:
        out["reason"] = fit.reason
    out["label"] = _label(out)
    return out


LABELS = {
    "fitted": "fits",
    "sped_up": "sped up",
    "substituted": "another candidate fits",
    "extended": "over the gap (picture held)",
    "kept": "over the gap",
    "dropped": "dropped",
}


def _label(f: dict[str, Any]) -> str:
    words = LABELS.get(f.get("decision") or "", f.get("decision") or "")
    if (f.get("over_dialogue") or 0) > 1e-3:
        words = f"over dialogue ({f['over_dialogue']:.2f} s)"
    if "duration" in f:
        words += f": {f['duration']:.2f} s at {f['wpm']:.0f} wpm"
    elif f.get("reason"):
        words += f": {f['reason']}"
    return words
