"""`locomad evaluate`: score an AD track against reference descriptions.

Predictions (our JSON, or any SRT/WebVTT) and references (SRT/WebVTT/CSV/JSON) are paired by
time: each prediction goes with the reference it overlaps most (intersection over union),
one-to-one, best pairs first. Pairs under `min_iou` stay unmatched and are listed in the
report, so a track made on other slots is never silently scored against the wrong lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locomad_cli import __version__
from locomad_cli.metrics import (
    ALL_METRICS,
    COCO_METRICS,
    PairScore,
    Similarity,
    Unavailable,
    bertscore,
    bertscore_f1,
    coco_scores,
    pairwise_similarity,
    recall_at_k_within_neighbours,
)
from locomad_cli.subtitles import Cue, read_timed
from locomad_cli.utils import LocomadError, atomic_open


@dataclass
class Match:
    prediction: Cue
    reference: Cue
    iou: float


def iou(a: Cue, b: Cue) -> float:
    inter = max(0.0, min(a.end, b.end) - max(a.start, b.start))
    union = max(a.end, b.end) - min(a.start, b.start)
    return inter / union if union > 0 else 0.0


def match_by_time(
    predictions: list[Cue], references: list[Cue], min_iou: float = 0.5
) -> tuple[list[Match], list[Cue], list[Cue]]:
    """Greedy one-to-one pairing by IoU (highest first); returns matches in film order and the
    unmatched predictions and references."""
    pairs = []
    for i, p in enumerate(predictions):
        for j, r in enumerate(references):
            v = iou(p, r)
            if v >= min_iou and v > 0:
                pairs.append((v, i, j))
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    used_p: set[int] = set()
    used_r: set[int] = set()
    matches = []
    for v, i, j in pairs:
        if i in used_p or j in used_r:
            continue
        used_p.add(i)
        used_r.add(j)
        matches.append(Match(predictions[i], references[j], v))
    matches.sort(key=lambda m: (m.reference.start, m.reference.end))
    un_p = [p for i, p in enumerate(predictions) if i not in used_p]
    un_r = [r for j, r in enumerate(references) if j not in used_r]
    return matches, un_p, un_r


def parse_metrics(spec: str | Sequence[str] | None) -> list[str]:
    if spec is None:
        return list(ALL_METRICS)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    if "all" in names:
        return list(ALL_METRICS)
    bad = [n for n in names if n not in ALL_METRICS]
    if bad or not names:
        raise LocomadError(
            f"unknown metric '{','.join(bad) or spec}' (choose from {', '.join(ALL_METRICS)}, all)"
        )
    return list(dict.fromkeys(names))


def _load(path: str | Path, what: str, need_text: bool) -> list[Cue]:
    """Timed texts of a file. An empty prediction stays (it is scored as empty, not
    skipped, so a model that says nothing is not rewarded); a reference needs text."""
    cues = read_timed(path)
    for c in cues:
        if c.end <= c.start:
            raise LocomadError(f"{path}:{c.line}: {what} ends at or before its start")
    if need_text:
        cues = [c for c in cues if c.text]
    if not cues:
        raise LocomadError(f"{path}: no {what} with text to compare")
    return cues


def evaluate(
    prediction: str | Path,
    reference: str | Path,
    metrics: str | Sequence[str] | None = None,
    min_iou: float = 0.5,
    bert_model: str = "bert-base-uncased",
    bert_rescale: bool = False,
    recall_model: str = "roberta-large",
    recall_k: int = 5,
    recall_n: int = 16,
    device: str = "cpu",
    bert_pair_score: PairScore | None = None,
    recall_similarity: Similarity | None = None,
) -> dict[str, Any]:
    """Match, score, and return the report (a JSON-ready dict). `bert_pair_score` and
    `recall_similarity` replace the BertScore models (tests inject hand-made ones)."""
    names = parse_metrics(metrics)
    preds = _load(prediction, "prediction", need_text=False)
    refs = _load(reference, "reference", need_text=True)
    matches, un_p, un_r = match_by_time(preds, refs, min_iou)
    p_text = [m.prediction.text for m in matches]
    r_text = [m.reference.text for m in matches]

    scores: dict[str, float | Unavailable] = {}
    coco = [m for m in names if m in COCO_METRICS]
    if coco:
        scores.update(coco_scores(p_text, r_text, coco))
    if "bertscore" in names:
        try:
            pair = bert_pair_score or bertscore_f1(bert_model, rescale=bert_rescale, device=device)
            scores["BertScore"] = (
                bertscore(p_text, r_text, pair) if matches else Unavailable("no matched slot")
            )
        except Exception as e:
            scores["BertScore"] = Unavailable(_reason(e))
    if "recall" in names:
        key = f"R@{recall_k}/{recall_n}"
        try:
            sim = recall_similarity or pairwise_similarity(
                bertscore_f1(recall_model, rescale=True, lowercase=False, device=device)
            )
            scores[key] = recall_at_k_within_neighbours(p_text, r_text, sim, recall_k, recall_n)
        except Exception as e:
            scores[key] = Unavailable(_reason(e))

    def cue(c: Cue) -> dict[str, Any]:
        return {"start": c.start, "end": c.end, "text": c.text}

    return {
        "prediction": str(prediction),
        "reference": str(reference),
        "predictions": len(preds),
        "references": len(refs),
        "matched": len(matches),
        "min_iou": min_iou,
        "metrics": {k: v for k, v in scores.items() if not isinstance(v, Unavailable)},
        "unavailable": {k: v.reason for k, v in scores.items() if isinstance(v, Unavailable)},
        "unmatched_predictions": [cue(c) for c in un_p],
        "unmatched_references": [cue(c) for c in un_r],
        "pairs": [
            {"prediction": cue(m.prediction), "reference": cue(m.reference), "iou": m.iou}
            for m in matches
        ],
        "settings": {
            "bert_model": bert_model,
            "bert_rescale": bert_rescale,
            "recall_model": recall_model,
            "recall_k": recall_k,
            "recall_n": recall_n,
        },
        "tool": "locomad",
        "version": __version__,
    }


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or e.__class__.__name__


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    import json

    with atomic_open(path) as f:
        json.dump(report, f, ensure_ascii=False, indent=2)
        f.write("\n")
    return Path(path)


def report_table(report: dict[str, Any]):
    """A rich Table of the scores, unavailable metrics with their reason."""
    from rich.table import Table

    table = Table(
        title=f"{report['matched']} matched of {report['predictions']} predictions / "
        f"{report['references']} references (IoU ≥ {report['min_iou']})"
    )
    table.add_column("metric")
    table.add_column("score", justify="right")
    for name, value in report["metrics"].items():
        table.add_row(name, f"{value:.2f}")
    for name, reason in report["unavailable"].items():
        table.add_row(name, f"[yellow]unavailable[/]: {reason}")
    return table
