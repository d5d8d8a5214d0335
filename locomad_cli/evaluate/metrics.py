"""Caption metrics as the LoCo-MAD paper reports them.

CIDEr, BLEU-1..4, ROUGE-L, METEOR and SPICE come from pycocoevalcap after its PTB tokenizer,
exactly as the authors (and COCO) computed them; BertScore from the `bert-score` package; and
Recall@k within Neighbours (AutoAD-II), which asks whether each prediction is closer to its
own reference than to the references of nearby slots, so it rewards descriptions that are
specific to their moment rather than generic. Scores are reported ×100, as in the paper.

A metric whose dependency is missing (no Java, no network for SPICE's CoreNLP models, BERT
weights not in the local cache) is returned as `Unavailable(reason)`, the reason naming what
fixes it; the others still run.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COCO_METRICS = ("cider", "bleu", "rouge", "meteor", "spice")
ALL_METRICS = (*COCO_METRICS, "bertscore", "recall")


@dataclass
class Unavailable:
    """A metric that could not be computed here, and why."""

    reason: str


Similarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""(predictions, references) → [len(predictions), len(references)] similarity matrix."""


def _one_line_error(e: BaseException) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text[:300]


def ptb_tokenize(texts: dict[int, list[str]]) -> dict[int, list[str]]:
    """pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1 in Java, one call for everything):
    lower-cased, punctuation dropped."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = {k: [{"caption": t} for t in v] for k, v in texts.items()}
    with _quiet_stderr():  # the Java tokenizer prints a speed line on every call
        return PTBTokenizer().tokenize(data)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (child processes inherit it) for the duration."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


CORENLP_ENV = "LOCOMAD_CORENLP"
"""A folder with Stanford CoreNLP 3.6.0's two jars, for SPICE (evaluate --corenlp's default)."""
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_HINT = (
    "get stanford-corenlp-full-2015-12-09.zip on a connected machine and pass --corenlp DIR "
    f"(the folder holding {CORENLP_JARS[0]} and {CORENLP_JARS[1]}; or set {CORENLP_ENV})"
)


def corenlp_jars(folder: str | Path | None = None) -> list[Path] | None:
    """CoreNLP's two jars for SPICE: in `folder` (or $LOCOMAD_CORENLP), else where pycocoevalcap
    keeps them after its own download; None when they are in neither place."""
    candidates = []
    folder = folder or os.environ.get(CORENLP_ENV)
    if folder:
        candidates.append(Path(folder).expanduser())
    with contextlib.suppress(ImportError):
        import pycocoevalcap.spice as spice

        candidates.append(Path(spice.__file__).parent / "lib")
    for c in candidates:
        jars = [c / j for j in CORENLP_JARS]
        if all(j.is_file() for j in jars):
            return jars
    return None


def coco_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    metrics: Sequence[str] = COCO_METRICS,
    corenlp: str | Path | None = None,
) -> dict[str, float | Unavailable]:
    """Corpus scores of paired predictions and references (one reference per prediction, as
    in MAD), named CIDEr, BLEU-1..4, ROUGE-L, METEOR, SPICE. `corenlp` is a folder with
    CoreNLP's jars for SPICE (else $LOCOMAD_CORENLP, else pycocoevalcap's own download)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references must pair up")
    out: dict[str, float | Unavailable] = {}
    if not predictions:
        return {name: Unavailable("no matched prediction") for name in _names(metrics)}
    n = len(predictions)
    try:  # one Java call for predictions and references together
        tokens = ptb_tokenize({i: [t] for i, t in enumerate([*predictions, *references])})
    except Exception as e:  # no Java: every COCO metric needs the tokenizer
        why = f"PTB tokenizer failed (needs Java): {_one_line_error(e)}"
        return {name: Unavailable(why) for name in _names(metrics)}
    res = {i: tokens[i] for i in range(n)}
    gts = {i: tokens[n + i] for i in range(n)}
    for metric in metrics:
        try:
            if metric == "spice" and (corenlp or os.environ.get(CORENLP_ENV)):
                out["SPICE"] = _spice_with_local_corenlp(gts, res, corenlp)
            else:
                out.update(_coco_metric(metric, gts, res))
        except (Exception, SystemExit) as e:  # SPICE's model download may sys.exit
            why = _one_line_error(e)
            if metric == "spice":
                why = f"SPICE needs Stanford CoreNLP 3.6.0 ({why}); {CORENLP_HINT}"
            out.update({name: Unavailable(why) for name in _names([metric])})
    return out


def _spice_with_local_corenlp(gts: dict, res: dict, corenlp: str | Path | None) -> float:
    """SPICE from pycocoevalcap's jar with CoreNLP's jars taken from a local folder (its own
    wrapper can only download them into its package folder): the mean of the per-pair
    F-scores, as pycocoevalcap reports it, ×100."""
    import pycocoevalcap.spice as spice

    folder = corenlp or os.environ.get(CORENLP_ENV)
    jars = corenlp_jars(folder)
    if jars is None or Path(folder).expanduser().resolve() != jars[0].parent.resolve():
        raise OSError(f"no {' and '.join(CORENLP_JARS)} in {folder}")
    home = Path(spice.__file__).parent
    classpath = os.pathsep.join(
        [str(home / "spice-1.0.jar"), *map(str, jars), str(home / "lib" / "*")]
    )
    items = [{"image_id": k, "test": res[k][0], "refs": gts[k]} for k in sorted(gts)]
    with tempfile.TemporaryDirectory(prefix="locomad-spice-") as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(items), encoding="utf-8")
        cmd = ["java", "-Xmx8G", "-cp", classpath, "edu.anu.spice.SpiceScorer", str(src)]
        done = subprocess.run(
            [*cmd, "-out", str(dst), "-subset", "-silent"], capture_output=True, text=True
        )
        if done.returncode != 0 or not dst.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise OSError(f"SPICE failed: {tail[0][:200]}")
        results = json.loads(dst.read_text(encoding="utf-8"))
    return 100 * float(np.mean([float(r["scores"]["All"]["f"]) for r in results]))


def _names(metrics: Sequence[str]) -> list[str]:
    table = {
        "cider": ["CIDEr"],
        "bleu": ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"],
        "rouge": ["ROUGE-L"],
        "meteor": ["METEOR"],
        "spice": ["SPICE"],
    }
    return [n for m in metrics for n in table[m]]


def _coco_metric(metric: str, gts: dict, res: dict) -> dict[str, float]:
    if metric == "cider":
        from pycocoevalcap.cider.cider import Cider

        return {"CIDEr": 100 * float(Cider().compute_score(gts, res)[0])}
    if metric == "bleu":
        from pycocoevalcap.bleu.bleu import Bleu

        with contextlib.redirect_stdout(io.StringIO()):  # it prints its own stats
            scores = Bleu(4).compute_score(gts, res)[0]
        return {f"BLEU-{i + 1}": 100 * float(s) for i, s in enumerate(scores)}
    if metric == "rouge":
        from pycocoevalcap.rouge.rouge import Rouge

        return {"ROUGE-L": 100 * float(Rouge().compute_score(gts, res)[0])}
    if metric == "meteor":
        from pycocoevalcap.meteor.meteor import Meteor

        # one Java process for the whole set (its start-up costs seconds)
        scorer = Meteor()
        try:
            return {"METEOR": 100 * float(scorer.compute_score(gts, res)[0])}
        finally:
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    if metric == "spice":
        from pycocoevalcap.spice.spice import Spice

        with contextlib.redirect_stdout(io.StringIO()):
            score = Spice().compute_score(gts, res)[0]
        return {"SPICE": 100 * float(score)}
    raise ValueError(f"unknown metric {metric}")


# --- BertScore --------------------------------------------------------------------------------


def resolve_hf_model(name: str) -> Path:
    """A local folder for `name`: the folder itself, or its snapshot in the Hugging Face cache
    (downloaded when the hub is reachable). Raises OSError with a clear reason otherwise —
    checked up front because bert-score's own loading retries for ~50 s when offline."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    from locomad_cli.utils import hf_load_kwargs, hub_offline_hint

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "merges.txt", "vocab.*"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, **hf_load_kwargs(name)))
    except Exception:
        raise OSError(hub_offline_hint(name)) from None


PairScore = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""(predictions, references) of equal length → [n] score of each pair."""


def bertscore_f1(
    model: str = "bert-base-uncased",
    rescale: bool = False,
    lowercase: bool = True,
    device: str = "cpu",
    batch_size: int = 64,
) -> PairScore:
    """BertScore F1 of each (prediction, reference) pair with `model` loaded once. The paper's
    BertS column: bert-base-uncased, lower-cased, no rescaling; AutoAD-II's R@k/N:
    roberta-large rescaled with bert-score's baseline."""
    import bert_score
    from bert_score.utils import model2layers

    path = resolve_hf_model(model)
    num_layers = model2layers.get(model)
    if num_layers is None:
        from transformers import AutoConfig

        num_layers = AutoConfig.from_pretrained(path).num_hidden_layers
    baseline = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{model}.tsv"
    if rescale and not baseline.is_file():
        raise OSError(f"bert-score ships no rescaling baseline for '{model}'")
    scorer = bert_score.BERTScorer(
        model_type=str(path),
        num_layers=num_layers,
        lang="en",
        rescale_with_baseline=rescale,
        baseline_path=str(baseline) if rescale else None,
        device=device,
        batch_size=batch_size,
    )

    def score(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        cands, golds = list(preds), list(refs)
        if lowercase:
            cands, golds = [c.lower() for c in cands], [g.lower() for g in golds]
        if not cands:
            return np.zeros(0)
        return scorer.score(cands, golds)[2].numpy().astype(float)

    return score


def pairwise_similarity(pair_score: PairScore) -> Similarity:
    """Every prediction against every reference, in one batched call of `pair_score`."""

    def similarity(preds: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        cands = [p for p in preds for _ in refs]
        golds = [r for _ in preds for r in refs]
        return np.asarray(pair_score(cands, golds), dtype=float).reshape(len(preds), len(refs))

    return similarity


def bertscore(
    predictions: Sequence[str], references: Sequence[str], pair_score: PairScore
) -> float:
    """Mean BertScore F1 ×100 of paired predictions and references."""
    if not predictions:
        return math.nan
    return 100 * float(np.mean(pair_score(predictions, references)))


def recall_at_k_within_neighbours(
    predictions: Sequence[str],
    references: Sequence[str],
    similarity: Similarity,
    k: int = 5,
    n: int = 16,
    stride: int = 8,
) -> float | Unavailable:
    """R@k/N of one film (AutoAD-II), ×100.

    Predictions and references are paired and in film order. Windows of `n` consecutive slots
    start every `stride` slots (an incomplete tail window is dropped); inside a window, row i
    of the prediction × reference similarity matrix is a hit when reference i is among the
    row's top `k` (ties counted in the prediction's favour only if strictly fewer than `k`
    references score higher). The result averages hits over every row of every window.
    """
    hits = recall_hits(predictions, references, similarity, k, n, stride)
    if not hits:
        return Unavailable(f"needs at least {n} matched slots in a film (got {len(predictions)})")
    return 100 * float(np.mean(hits))


def recall_hits(
    predictions: Sequence[str],
    references: Sequence[str],
    similarity: Similarity,
    k: int = 5,
    n: int = 16,
    stride: int = 8,
) -> list[bool]:
    """Per-row hits of every window (see `recall_at_k_within_neighbours`), so several films
    can be pooled."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references must pair up")
    hits: list[bool] = []
    for start in range(0, len(predictions) - n + 1, stride):
        sim = np.asarray(
            similarity(predictions[start : start + n], references[start : start + n]),
            dtype=float,
        )
        for i in range(n):
            higher = int((sim[i] > sim[i, i]).sum())
            hits.append(higher < k)
    return hits
