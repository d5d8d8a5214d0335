"""`locomad demo probe`: where between the pixels and the words does the model lose what the
frames show?

For location, look, prop and action, a linear probe (multinomial logistic regression) is
trained on the training films' slots and tested on held-out films, at three points of the
visual path:

- `frames`: the mean CLIP frame feature of the slot (what extraction gives the model);
- `queries`: the PME's query outputs q̃ (what stage 1 makes of the frames);
- `prompt`: the projected visual prompt Proj_l(q̃) (what the LLM receives).

A linear probe on a slot's mean frame cannot tell who came in from who was already there
(both are in the mean), so beside it a small sequence reader (`sequence_probe`: two
transformer layers over the slot's frames, or over the Lq query or prompt tokens, trained on
the same slots for every attribute at once) bounds what a decoder downstream could read at
each point (`reader/<point>`).

Then the model itself, recurrent setting, with the visual prompt intact, zeroed, and shuffled
across held-out slots: if zeroing it changes little, the LLM writes from its language prior
and the context, not from the film. A probe far above the model's own accuracy says the
information reaches that point and is lost after it.

The probe is hand-written (a few lines of torch L-BFGS) rather than scikit-learn's, which
the project does not otherwise need; the reader is torch's own transformer layers.
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
    """What is on screen in each slot, from world.json: the room, a newcomer's look (the
    entrances, the slots attributes.py scores looks on), the prop the action involves, the
    prop lying in view at the scene's opening (prop_seen, as attributes.py scores it), the
    action's kind (None where there is none)."""
    cast = film.world["cast"]
    out = []
    for slot in film.world["slots"]:
        a = slot["action"]
        out.append(
            {
                "location": a["location"],
                "look": _LOOK_INDEX[cast[a["actor"]]["look"]] if a["kind"] == "enter" else None,
                "prop": a["prop"] if a["kind"] in PROP_ACTIONS else None,
                "prop_seen": a["prop"] if a["kind"] == "establish" else None,
                "action": a["kind"],
            }
        )
    return out


def slot_vectors(model, film: DemoFilm) -> dict[str, torch.Tensor]:
    """Per slot, the vector at each probe point: [slots, dim] for frames (the mean of the
    slot's frames), queries and prompt (their Lq tokens side by side)."""
    return _vectors(slot_sequences(model, film))


def _vectors(seqs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    frames, fmask = seqs["frames"]
    mean = (frames * fmask[..., None]).sum(1) / fmask.sum(1, keepdim=True).clamp(min=1)
    return {
        "frames": mean,
        "queries": seqs["queries"][0].flatten(1),
        "prompt": seqs["prompt"][0].flatten(1),
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


@torch.no_grad()
def slot_sequences(model, film: DemoFilm) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per slot, the whole sequence at each probe point, as (values [slots, L, dim], mask
    [slots, L]): the slot's frames (up to pme.max_frames, padded), the Lq query outputs q̃,
    the Lq prompt tokens. What a reader of order and of every token can use, where
    `slot_vectors` keeps one vector."""
    from locomad_cli.data.records import ClipRecord, collate
    from locomad_cli.describe.context import slot_frames

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
    every = torch.ones(q.shape[:2], dtype=torch.bool)
    return {
        "frames": (frames.float().cpu(), fmask.bool().cpu()),
        "queries": (q.float().cpu(), every),
        "prompt": (prompt.float().cpu(), every),
    }


class _Reader(torch.nn.Module):
    """A 2-layer transformer over a sequence with learnt positions; its mean, first and last
    outputs feed one linear head per attribute."""

    def __init__(self, dim: int, length: int, classes: dict[str, int], width: int = 128):
        super().__init__()
        nn = torch.nn
        self.inp = nn.Linear(dim, width)
        self.pos = nn.Parameter(torch.zeros(length, width))
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, 0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.heads = nn.ModuleDict({a: nn.Linear(3 * width, n) for a, n in classes.items()})

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.enc(self.inp(x) + self.pos[: x.shape[1]], src_key_padding_mask=~mask)
        m = mask[..., None].float()
        mean = (z * m).sum(1) / m.sum(1).clamp(min=1)
        last = z[torch.arange(len(z)), mask.sum(1).clamp(min=1) - 1]
        pooled = torch.cat([mean, z[:, 0], last], -1)
        return {a: head(pooled) for a, head in self.heads.items()}


def sequence_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    train_y: dict[str, list],
    test: tuple[torch.Tensor, torch.Tensor],
    test_y: dict[str, list],
    epochs: int = 40,
    seed: int = 0,
) -> dict[str, float]:
    """Per attribute, the test accuracy of one small sequence reader (`_Reader`) trained on
    the train sequences for every attribute at once (AdamW, cross-entropy; labels None are
    left out, classes unseen in training count as wrong). Sequences are (values [N, L, D],
    mask [N, L]), standardised with the train statistics of the unmasked positions.

    Why beside the linear probe: a slot's mean frame cannot say who came in (the newcomer and
    those already there are all in it); the order of the frames can. This is a cheap upper
    bound on what a decoder downstream could read from that point of the visual path."""
    x, mask = train
    xt, mask_t = test
    seen = x[mask]
    mu, sd = seen.mean(0), seen.std(0).clamp(min=1e-6)
    classes = {a: sorted({c for c in ys if c is not None}, key=str) for a, ys in train_y.items()}
    classes = {a: cs for a, cs in classes.items() if cs}
    index = {a: {c: i for i, c in enumerate(cs)} for a, cs in classes.items()}
    y = {a: torch.tensor([-100 if c is None else index[a][c] for c in train_y[a]]) for a in classes}
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        reader = _Reader(
            x.shape[-1], max(x.shape[1], xt.shape[1]), {a: len(c) for a, c in classes.items()}
        )
        opt = torch.optim.AdamW(reader.parameters(), lr=1e-3, weight_decay=0.05)
        xs = (x - mu) / sd
        for _ in range(epochs):
            for rows in torch.randperm(len(xs)).split(32):
                out = reader(xs[rows], mask[rows])
                losses = [
                    torch.nn.functional.cross_entropy(out[a], y[a][rows], ignore_index=-100)
                    for a in classes
                    if bool((y[a][rows] >= 0).any())
                ]
                opt.zero_grad()
                torch.stack(losses).sum().backward()
                opt.step()
        reader.eval()
        with torch.no_grad():
            out = reader((xt - mu) / sd, mask_t)
    result = {}
    for a, ys in test_y.items():
        rows = [i for i, c in enumerate(ys) if c is not None]
        if a not in classes or not rows:
            result[a] = 0.0
            continue
        pred = out[a].argmax(-1).tolist()
        result[a] = sum(classes[a][pred[i]] == ys[i] for i in rows) / len(rows)
    return result


def _padded(seqs: list[dict]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The films' sequences at each point, padded to one length and stacked."""
    out = {}
    for point in POINTS:
        length = max(s[point][0].shape[1] for s in seqs)
        vals, masks = [], []
        for s in seqs:
            v, m = s[point]
            vals.append(torch.nn.functional.pad(v, (0, 0, 0, length - v.shape[1])))
            masks.append(torch.nn.functional.pad(m, (0, length - m.shape[1])))
        out[point] = (torch.cat(vals), torch.cat(masks))
    return out


def _rows(model, films: list[DemoFilm]) -> tuple[dict, dict[str, torch.Tensor], list[dict]]:
    """Each film through the visual path once: (padded sequences, vectors, labels)."""
    seqs = [slot_sequences(model, f) for f in films]
    vecs = [_vectors(s) for s in seqs]
    return (
        _padded(seqs),
        {p: torch.cat([v[p] for v in vecs]) for p in POINTS},
        [lab for f in films for lab in slot_labels(f)],
    )


@dataclass
class ProbeConfig:
    root: str
    """A `locomad demo make-data` folder with features (train/ and the held-out split)."""
    split: str = "test"
    train_films: int = 48
    """Training films the probes are fit on (the first ones of train/; the shipped recipe
    trains on 48)."""
    model_settings: bool = True
    """Also run the model itself with the visual prompt intact, zeroed and shuffled."""


def probe(model, cfg: ProbeConfig, encode_text=None) -> dict[str, dict[str, float]]:
    """{'probe/<point>': {attribute: accuracy}, 'model/<visual>': measure's scores}."""
    train = load_films(cfg.root, "train")[: cfg.train_films]
    held = load_films(cfg.root, cfg.split)
    tr_seq, tr_x, tr_lab = _rows(model, train)
    te_seq, te_x, te_lab = _rows(model, held)
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
    tr_y = {a: [lab[a] for lab in tr_lab] for a in PROBED}
    te_y = {a: [lab[a] for lab in te_lab] for a in PROBED}
    for point in POINTS:
        out[f"reader/{point}"] = sequence_probe(tr_seq[point], tr_y, te_seq[point], te_y)
    if not cfg.model_settings:
        return out
    if encode_text is None:
        from locomad_cli.features.clip import load_clip

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
