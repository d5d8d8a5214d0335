"""`locomad evaluate`: score an AD track against reference descriptions.

Predictions (our JSON, or any SRT/WebVTT) and references (SRT/WebVTT/CSV/JSON) are paired by
time: each prediction goes with the reference it overlaps most (intersection over union),
one-to-one, best pairs first. Pairs under `min_iou` stay unmatched and are listed in the
report, so a track made on other slots is never silently scored against the wrong lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locomad_cli import __version__
from locomad_cli.evaluate.metrics import (
    ALL_METRICS,
    COCO_METRICS,
    PairScore,
    Similarity,
    Unavailable,
    bertscore,
    bertscore_f1,
    coco_scores,
    pairwise_similarity,
    recall_hits,
)
from locomad_cli.threads import torch_threads
from locomad_cli.tracks.readers import Cue, read_timed
from locomad_cli.utils import LocomadError, atomic_open, parse_choice_list


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
    return parse_choice_list(spec, list(ALL_METRICS), "metric")


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


PRED_SUFFIXES = (".ad.json", ".ad.vtt", ".ad.srt")
REF_SUFFIXES = (".ad.srt", ".ad.vtt", ".ad.csv", ".ad.json")


def film_files(prediction: str | Path, reference: str | Path) -> tuple[list, list[str]]:
    """[(film, prediction file, reference file)] and the films without a reference.

    Two files are one film. Two folders pair `NAME.ad.json` (or `.ad.vtt`, `.ad.srt`) in the
    prediction folder with `NAME.ad.srt|vtt|csv|json` in the reference folder (the layout of
    `describe -o` and of a film folder for training)."""
    p, r = Path(prediction), Path(reference)
    if p.is_dir() != r.is_dir():
        raise LocomadError("give two files or two folders (predictions, references)")
    if not p.is_dir():
        name = p.name.split(".")[0]
        return [(name, p, r)], []
    preds: dict[str, Path] = {}
    for suffix in reversed(PRED_SUFFIXES):  # json wins over vtt over srt
        for f in p.glob(f"*{suffix}"):
            preds[f.name[: -len(suffix)]] = f
    pairs, missing = [], []
    for film in sorted(preds):
        ref = next((r / f"{film}{s}" for s in REF_SUFFIXES if (r / f"{film}{s}").is_file()), None)
        if ref is None:
            missing.append(film)
        else:
            pairs.append((film, preds[film], ref))
    if not pairs:
        raise LocomadError(f"no film of {p} has a reference in {r} (NAME.ad.srt|vtt|csv|json)")
    return pairs, missing


def check_options(
    min_iou: float,
    device: str,
    corenlp: str | Path | None = None,
    recall_k: int = 5,
    recall_n: int = 16,
) -> None:
    """Refuse bad settings in one line before anything is scored: they would otherwise make
    every metric 'unavailable' (exit 1, as if the machine lacked something) or score wrongly."""
    if not (isinstance(min_iou, int | float) and 0.0 <= min_iou <= 1.0):  # NaN fails too
        raise LocomadError(f"--min-iou is an overlap in [0, 1], got {min_iou}")
    _check_device(device)
    if corenlp is not None and not Path(corenlp).expanduser().is_dir():
        raise LocomadError(f"--corenlp {corenlp} is not a folder (it holds CoreNLP's jars)")
    if not 1 <= recall_k <= recall_n:
        raise LocomadError(f"recall needs 1 <= k <= N, got k={recall_k}, N={recall_n}")


def _check_device(device: str) -> None:
    """A device torch knows by that name ('auto', 'cpu', 'cuda:1', 'mps'), and a GPU when
    one is asked for."""
    if device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise LocomadError(
            f"--device {device}: not a device (cpu, cuda, cuda:N, mps or auto)"
        ) from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LocomadError(f"--device {device} asked for, but torch sees no CUDA GPU")


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
    threads: int | None = None,
    bert_pair_score: PairScore | None = None,
    recall_similarity: Similarity | None = None,
    corenlp: str | Path | None = None,
) -> dict[str, Any]:
    """Match, score, and return the report (a JSON-ready dict). Several films (two folders)
    are pooled: corpus-level CIDEr/BLEU/ROUGE-L/METEOR/SPICE over all pairs (as COCOEvalCap
    does), BertScore over all pairs, R@k/N over every window of every film.
    `bert_pair_score` and `recall_similarity` replace the BertScore models (tests); `corenlp`
    is a folder with CoreNLP's jars for SPICE; `threads` is torch's for BertScore (None:
    threads.pick_threads chooses). Metrics that cannot run are listed under
    `unavailable` with a reason that names the flag fixing it."""
    names = parse_metrics(metrics)
    check_options(min_iou, device, corenlp, recall_k, recall_n)
    films, missing = film_files(prediction, reference)
    per_film = []
    for film, pred_file, ref_file in films:
        preds = _load(pred_file, "prediction", need_text=False)
        refs = _load(ref_file, "reference", need_text=True)
        matches, un_p, un_r = match_by_time(preds, refs, min_iou)
        per_film.append((film, pred_file, ref_file, preds, refs, matches, un_p, un_r))
    pairs = [(film, m) for film, *_, matches, _, _ in per_film for m in matches]
    p_text = [m.prediction.text for _, m in pairs]
    r_text = [m.reference.text for _, m in pairs]

    scores: dict[str, float | Unavailable] = {}
    coco = [m for m in names if m in COCO_METRICS]
    if coco:
        scores.update(coco_scores(p_text, r_text, coco, corenlp=corenlp))
    bert = ("bertscore" in names and bert_pair_score is None) or (
        "recall" in names and recall_similarity is None
    )
    with torch_threads(threads, False, device) if bert else contextlib.nullcontext():
        if "bertscore" in names:
            scores["BertScore"] = _bertscore_value(
                p_text, r_text, bert_pair_score, bert_model, bert_rescale, device
            )
        if "recall" in names:
            scores[f"R@{recall_k}/{recall_n}"] = _recall_value(
                [f[5] for f in per_film],
                recall_similarity,
                recall_model,
                recall_k,
                recall_n,
                device,
            )

    settings = {
        "bert_model": bert_model,
        "bert_rescale": bert_rescale,
        "recall_model": recall_model,
        "recall_k": recall_k,
        "recall_n": recall_n,
    }
    return _report(prediction, reference, min_iou, per_film, missing, scores, settings)


def _report(
    prediction: str | Path,
    reference: str | Path,
    min_iou: float,
    per_film: list[tuple],
    missing: list[str],
    scores: dict[str, float | Unavailable],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The JSON report: totals, scores (and why any is missing), films, unmatched cues, pairs."""
    pairs = [(film, m) for film, *_, matches, _, _ in per_film for m in matches]

    def cue(c: Cue, film: str) -> dict[str, Any]:
        return {"film": film, "start": c.start, "end": c.end, "text": c.text}

    return {
        "prediction": str(prediction),
        "reference": str(reference),
        "predictions": sum(len(f[3]) for f in per_film),
        "references": sum(len(f[4]) for f in per_film),
        "matched": len(pairs),
        "min_iou": min_iou,
        "metrics": {k: v for k, v in scores.items() if not isinstance(v, Unavailable)},
        "unavailable": {k: v.reason for k, v in scores.items() if isinstance(v, Unavailable)},
        "films": [
            {
                "film": film,
                "prediction": str(pf),
                "reference": str(rf),
                "predictions": len(preds),
                "references": len(refs),
                "matched": len(matches),
            }
            for film, pf, rf, preds, refs, matches, _, _ in per_film
        ],
        "films_without_reference": missing,
        "unmatched_predictions": [cue(c, f[0]) for f in per_film for c in f[6]],
        "unmatched_references": [cue(c, f[0]) for f in per_film for c in f[7]],
        "pairs": [
            {
                "film": film,
                "prediction": {k: getattr(m.prediction, k) for k in ("start", "end", "text")},
                "reference": {k: getattr(m.reference, k) for k in ("start", "end", "text")},
                "iou": m.iou,
            }
            for film, m in pairs
        ],
        "settings": settings,
        "tool": "locomad",
        "version": __version__,
    }


def _bertscore_value(
    p_text: list[str],
    r_text: list[str],
    pair_score: PairScore | None,
    model: str,
    rescale: bool,
    device: str,
) -> float | Unavailable:
    """BertScore F1 over the matched pairs, or why it cannot be had."""
    try:
        pair = pair_score or bertscore_f1(model, rescale=rescale, device=device)
        return bertscore(p_text, r_text, pair) if p_text else Unavailable("no matched slot")
    except Exception as e:
        return Unavailable(f"{_reason(e)}; pass --bert-model DIR (a local copy of the model)")


def _recall_value(
    films: list[list[Match]],
    similarity: Similarity | None,
    model: str,
    k: int,
    n: int,
    device: str,
) -> float | Unavailable:
    """R@k/N over every window of every film's matched pairs, or why it cannot be had."""
    try:
        sim = similarity or pairwise_similarity(
            bertscore_f1(model, rescale=True, lowercase=False, device=device)
        )
        hits = []
        for matches in films:
            fp = [m.prediction.text for m in matches]
            fr = [m.reference.text for m in matches]
            hits += recall_hits(fp, fr, sim, k, n)
        if not hits:
            return Unavailable(f"needs at least {n} matched slots in a film")
        return 100 * sum(hits) / len(hits)
    except Exception as e:
        return Unavailable(f"{_reason(e)}; pass --recall-model DIR (a local copy of the model)")


def missing_line(report: dict[str, Any]) -> str | None:
    """One line naming the requested metrics that could not be computed (None if none)."""
    missing = list(report["unavailable"])
    if not missing:
        return None
    return (
        f"{len(missing)} requested metric(s) unavailable: {', '.join(missing)} (reasons in the "
        "table and the report); pass --allow-missing to accept the scores without them"
    )


def unmatched_line(report: dict[str, Any]) -> str | None:
    """One line counting the predictions and references left without a partner (None if
    none)."""
    preds, refs = report["unmatched_predictions"], report["unmatched_references"]
    if not preds and not refs:
        return None
    return (
        f"unmatched: {len(preds)} predictions, {len(refs)} references (listed in the JSON report)"
    )


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

    films = len(report["films"])
    table = Table(
        title=f"{report['matched']} matched of {report['predictions']} predictions / "
        f"{report['references']} references (IoU ≥ {report['min_iou']})"
        + (f", {films} films" if films > 1 else "")
    )
    table.add_column("metric")
    table.add_column("score", justify="right")
    for name, value in report["metrics"].items():
        table.add_row(name, f"{value:.2f}")
    for name, reason in report["unavailable"].items():
        table.add_row(name, f"[yellow]unavailable[/]: {reason}")
    return table
