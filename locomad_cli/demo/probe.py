"""`locomad demo probe`: where between the pixels and the words does the model lose what the
frames show?

For location, look, prop and action, a linear probe (multinomial logistic regression) is
trained on the training films' slots and tested on held-out films, at three points of the
visual path:

- `frames`: the mean CLIP frame feature of the slot (what extraction gives the model);
- `queries`: the PME's query outputs q̃ (what stage 1 makes of the frames);
- `prompt`: the projected visual prompt Proj_l(q̃) (what the LLM receives).

Then the model itself, recurrent setting, with the visual prompt intact, zeroed, and shuffled
across held-out slots: if zeroing it changes little, the LLM writes from its language prior
and the context, not from the film. A probe far above the model's own accuracy says the
information reaches that point and is lost after it.

The probe is hand-written (a few lines of torch L-BFGS) rather than scikit-learn's, which
the project does not otherwise need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from locomad_cli.demo.attributes import PROP_ACTIONS
from locomad_cli.demo.measure import DemoFilm, describe_film, load_films, score
from locomad_cli.demo.world import LOOKS

PROBED = ("location", "look", "prop", "prop_seen", "action")
POINTS = ("frames", "queries", "prompt")
VISUAL = ("intact", "zeroed", "shuffled")
_LOOK_INDEX = {look.phrase: i for i, look in enumerate(LOOKS)}


def slot_labels(film: DemoFilm) -> list[dict[str, object]]:
    """What is on screen in each slot, from world.json: the room, the acting character's
    look, the prop the action involves, the prop lying in view at the scene's opening
    (prop_seen, as attributes.py scores it), the action's kind (None where there is none)."""
    cast = film.world["cast"]
    out = []
    for slot in film.world["slots"]:
        a = slot["action"]
        out.append(
            {
                "location": a["location"],
                "look": None if a["actor"] is None else _LOOK_INDEX[cast[a["actor"]]["look"]],
                "prop": a["prop"] if a["kind"] in PROP_ACTIONS else None,
                "prop_seen": a["prop"] if a["kind"] == "establish" else None,
                "action": a["kind"],
            }
        )
    return out


@torch.no_grad()
def slot_vectors(model, film: DemoFilm) -> dict[str, torch.Tensor]:
    """Per slot, the vector at each probe point: [slots, dim] for frames, queries, prompt."""
    from locomad_cli.data.records import ClipRecord, collate
    from locomad_cli.describe import slot_frames

    card = model.card
    records = [
        ClipRecord(film.name, s, e, slot_frames(film.features, film.fps, s, e))
        for s, e, _ in film.slots
    ]
    batch = collate(records, card.pme.max_frames, card.dsm.proposal_len)
    frames, fmask = model._frames(batch)
    model.eval()
    q = model.pme.encode_queries(frames, fmask)
    prompt = model.decoder.project(q)
    mean = (frames * fmask[..., None]).sum(1) / fmask.sum(1, keepdim=True).clamp(min=1)
    return {
        "frames": mean.float().cpu(),
        "queries": q.flatten(1).float().cpu(),
        "prompt": prompt.flatten(1).float().cpu(),
    }


def linear_probe(
    train_x: torch.Tensor,
    train_y: list,
    test_x: torch.Tensor,
    test_y: list,
    weight_decay: float = 1e-3,
    steps: int = 200,
) -> float:
    """Accuracy on the test rows of a multinomial logistic regression fit on the train rows
    (features standardised with the train statistics; classes unseen in training count as
    wrong)."""
    classes = sorted({*train_y}, key=str)
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for c in train_y])
    mu, sd = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    x, xt = (train_x - mu) / sd, (test_x - mu) / sd
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(x.shape[1], len(classes), generator=g) * 0.01).requires_grad_()
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + weight_decay * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    pred = (xt @ w + b).argmax(1).tolist()
    hits = sum(classes[p] == t for p, t in zip(pred, test_y, strict=True))
    return hits / len(test_y) if test_y else 0.0


def _rows(model, films: list[DemoFilm]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    vecs = [slot_vectors(model, f) for f in films]
    return (
        {p: torch.cat([v[p] for v in vecs]) for p in POINTS},
        [lab for f in films for lab in slot_labels(f)],
    )


@dataclass
class ProbeConfig:
    root: str
    """A `locomad demo make-data` folder with features (train/ and the held-out split)."""
    split: str = "test"
    train_films: int = 24
    """Training films the probes are fit on (the first ones of train/)."""
    model_settings: bool = True
    """Also run the model itself with the visual prompt intact, zeroed and shuffled."""


def probe(model, cfg: ProbeConfig, encode_text=None) -> dict[str, dict[str, float]]:
    """{'probe/<point>': {attribute: accuracy}, 'model/<visual>': measure's scores}."""
    train = load_films(cfg.root, "train")[: cfg.train_films]
    held = load_films(cfg.root, cfg.split)
    tr_x, tr_lab = _rows(model, train)
    te_x, te_lab = _rows(model, held)
    out: dict[str, dict[str, float]] = {}
    for point in POINTS:
        out[f"probe/{point}"] = {}
        for attr in PROBED:
            tr = [i for i, lab in enumerate(tr_lab) if lab[attr] is not None]
            te = [i for i, lab in enumerate(te_lab) if lab[attr] is not None]
            out[f"probe/{point}"][attr] = linear_probe(
                tr_x[point][tr],
                [tr_lab[i][attr] for i in tr],
                te_x[point][te],
                [te_lab[i][attr] for i in te],
            )
    if not cfg.model_settings:
        return out
    if encode_text is None:
        from locomad_cli.clip import load_clip

        encode_text = load_clip(model.card).encode_text
    refs = [t for f in held for _, _, t in f.slots]
    prompts = te_x["prompt"].view(len(refs), model.card.pme.num_queries, -1)
    starts = [0]
    for f in held:
        starts.append(starts[-1] + len(f.slots))
    for visual in VISUAL:
        per_film = [
            describe_film(
                model,
                film,
                "recurrent",
                encode_text,
                None if visual == "intact" else VisualAblation(visual, prompts, starts[fi]),
            )
            for fi, film in enumerate(held)
        ]
        out[f"model/{visual}"] = score(held, per_film, refs)
    return out


@dataclass
class VisualAblation:
    """What the LLM sees instead of slot i's visual prompt: zeros, or (shuffled) the prompt of
    the slot half the held-out set away — another film as a rule — a fixed derangement, so
    the figure is reproducible."""

    mode: str
    prompts: torch.Tensor
    """[all held-out slots, Lq, W] projected prompts, film after film."""
    start: int
    """Row of this film's first slot in `prompts`."""

    def __call__(self, i: int, v: torch.Tensor) -> torch.Tensor:
        if self.mode == "zeroed":
            return torch.zeros_like(v)
        n = self.prompts.shape[0]
        return self.prompts[(self.start + i + max(1, n // 2)) % n][None].to(v.device, v.dtype)
