"""What the demo measures on held-out films, per setting: CIDEr, and what a listener would
notice — location, look, prop, action and name accuracy and the repeat rate (attributes.py).

Settings (the paper's ablations, on the demo world):
- `recurrent`: slots in film order, each description joins the context of the next ones and
  the DSM picks the top-k of the last `proposal_len` items (what `locomad describe` does);
- `oracle`: the same, but the context holds the reference descriptions (the paper's oracle
  setting): the names the films introduce are in it, so this is where the DSM can show that
  it finds the item that names the character on screen;
- `recurrent-last-k`, `oracle-last-k`: the DSM replaced by the k most recent items (Table 6,
  w/o DSM);
- `local`: no context at all;
- `stage1`: the PME alone writes the description with its VTG head after stage 1 (Table 4's
  "Stage1" row: generation without the LLM stage).

Name accuracy: among reference ADs that name a cast member, the fraction whose prediction
names the same character first (compared lower-cased, as the PME's tokenizer lower-cases).
A model without the right context item or dialogue line can only guess among 48 names.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from locomad_cli.data.records import ClipRecord, ContextItem, collate
from locomad_cli.demo.attributes import score_films
from locomad_cli.model.decoder import VisualHook
from locomad_cli.tracks.readers import Cue, slot_dialogue
from locomad_cli.utils import LocomadError

SETTINGS = ("oracle", "oracle-last-k", "recurrent", "recurrent-last-k", "local", "stage1")


@dataclass
class DemoFilm:
    name: str
    features: torch.Tensor
    fps: float
    slots: list[tuple[float, float, str]]
    """(start, end, reference text) in film order."""
    subtitles: list[tuple[float, float, str]]
    world: dict = field(default_factory=dict)
    """The film's world.json (cast, each slot's action): what attributes are scored on."""

    def dialogue(self) -> list[str]:
        """Each slot's dialogue by the rule `locomad describe` and training use
        (subtitles.dialogue_windows): the lines since the previous slot, and any it overlaps."""
        cues = [Cue(s, e, t) for s, e, t in self.subtitles]
        return slot_dialogue(cues, [(s, e) for s, e, _ in self.slots])


def load_films(root: str | Path, split: str = "test") -> list[DemoFilm]:
    """The films of a split with features (see `locomad demo make-data`)."""
    from locomad_cli.features.extract import load_features

    films = []
    for world_path in sorted((Path(root) / split).glob("*.world.json")):
        world = json.loads(world_path.read_text(encoding="utf-8"))
        feats_path = world_path.with_name(world["name"] + ".features.safetensors")
        if not feats_path.is_file():
            raise LocomadError(f"{feats_path}: missing (run `locomad demo features {root}`)")
        feats, meta = load_features(feats_path)
        films.append(
            DemoFilm(
                world["name"],
                feats.float(),
                float(meta["fps"]),
                [(s["start"], s["end"], s["text"]) for s in world["slots"]],
                [(ln["start"], ln["end"], ln["text"]) for ln in world["lines"]],
                world,
            )
        )
    if not films:
        raise LocomadError(f"{root}/{split}: no demo films")
    return films


def describe_film(
    model, film: DemoFilm, setting: str, encode_text, visual: VisualHook | None = None
) -> list[str]:
    """Descriptions of every slot of `film` under `setting`, one slot at a time in film
    order, with records built as `locomad describe` builds them. `visual`, when given, is
    called with (slot index, projected visual prompt) and returns what the LLM sees instead
    (the probe's zeroed and shuffled ablations)."""
    from locomad_cli.describe.context import slot_frames

    card = model.card
    oracle = setting.startswith("oracle")
    with_context = setting.startswith(("oracle", "recurrent"))
    history: list[ContextItem] = []
    cache: dict[str, torch.Tensor] = {}
    out: list[str] = []
    for i, ((start, end, reference), dialogue) in enumerate(
        zip(film.slots, film.dialogue(), strict=True)
    ):
        context = history[-card.dsm.proposal_len :] if with_context else []
        missing = [c.text for c in context if c.text not in cache]
        if missing:
            cache.update(zip(missing, encode_text(missing), strict=True))
        record = ClipRecord(
            film=film.name,
            start=start,
            end=end,
            features=slot_frames(film.features, film.fps, start, end),
            subtitle=dialogue,
            context=context,
            context_features=torch.stack([cache[c.text] for c in context]) if context else None,
        )
        batch = collate([record], card.pme.max_frames, card.dsm.proposal_len)
        hook = None if visual is None else functools.partial(visual, i)
        n_avoid = card.llm.avoid_repeats
        avoid = [out[-n_avoid:]] if setting.startswith("recurrent") and n_avoid > 0 else None
        fit = [(end - start) * card.describer.words_per_minute / 60]  # as describe: to fit the slot
        if setting == "stage1":
            text = pme_generate(model, batch)[0]
        elif not with_context:
            text = model.generate(batch, setting="local", visual=hook, budgets=fit)[0].text
        elif setting.endswith("last-k"):
            k = min(card.dsm.top_k, len(context))
            last = list(range(len(context) - k, len(context)))
            gen = model.generate(
                batch, selection_override=[last], visual=hook, avoid=avoid, budgets=fit
            )
            text = gen[0].text
        else:
            gen = model.generate(batch, setting="context", visual=hook, avoid=avoid, budgets=fit)
            text = gen[0].text
        text = text.strip()
        out.append(text)
        history.append(ContextItem(reference if oracle else text, record.subtitle, start, end))
    return out


@torch.no_grad()
def pme_generate(model, batch, max_len: int | None = None) -> list[str]:
    """Greedy captioning with the PME's VTG head (BLIP-2's stage-1 captioner): [DEC] then one
    token at a time under the causal VTG mask, until [SEP]. Hand-written because the PME is
    only trained in the library, never asked to write; this is what Table 4's "Stage1" row
    measures."""
    pme, tok = model.pme, model.pme_tokenizer
    max_len = max_len or model.card.pme.max_text_len
    was = pme.training
    pme.eval()
    frames, fmask = model._frames(batch)
    ids = torch.full((frames.shape[0], 1), tok.bos_token_id, device=frames.device)
    done = torch.zeros(frames.shape[0], dtype=torch.bool, device=frames.device)
    for _ in range(max_len - 1):
        mask = torch.ones_like(ids, dtype=torch.bool)
        _, t = pme.encode(frames, fmask, ids, mask, "vtg")
        nxt = pme.lm_head(t[:, -1]).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == tok.sep_token_id
        if bool(done.all()):
            break
    pme.train(was)
    return [tok.decode(row[1:], skip_special_tokens=True).strip() for row in ids.tolist()]


def measure(
    model,
    root: str | Path,
    settings=SETTINGS,
    split: str = "test",
    encode_text=None,
    films: list[DemoFilm] | None = None,
) -> dict[str, dict[str, float]]:
    """CIDEr, per-attribute accuracy (attributes.py) and the repeat rate of `model` on the
    demo films of `split`, per setting."""
    if encode_text is None:
        from locomad_cli.features.clip import load_clip

        encode_text = load_clip(model.card).encode_text
    films = films if films is not None else load_films(root, split)
    refs = [t for f in films for _, _, t in f.slots]
    results: dict[str, dict[str, float]] = {}
    model.eval()
    for setting in settings:
        if setting not in SETTINGS:
            raise LocomadError(f"unknown demo setting {setting!r} (choose {', '.join(SETTINGS)})")
        per_film = [describe_film(model, f, setting, encode_text) for f in films]
        results[setting] = score(films, per_film, refs)
    return results


def score(films: list[DemoFilm], per_film: list[list[str]], refs: list[str]) -> dict[str, float]:
    """CIDEr and the attribute scores of one setting's predictions."""
    from locomad_cli.evaluate.metrics import Unavailable, coco_scores

    preds = [p for ps in per_film for p in ps]
    cider = coco_scores([p or "<empty>" for p in preds], refs, metrics=("cider",))["CIDEr"]
    out = {"CIDEr": float("nan") if isinstance(cider, Unavailable) else float(cider)}
    out |= score_films([(f.world["slots"], ps) for f, ps in zip(films, per_film, strict=True)])
    out["slots"] = float(len(refs))
    return out
