import json

import numpy as np
import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from locomad_cli.evaluate.metrics import (
    Unavailable,
    bertscore_f1,
    coco_scores,
    pairwise_similarity,
    recall_at_k_within_neighbours,
    recall_hits,
)
from locomad_cli.evaluate.report import evaluate, match_by_time, parse_metrics, write_report
from locomad_cli.tracks.readers import Cue
from locomad_cli.utils import LocomadError

PREDS = [
    "A man walks his dog in the park.",
    "She opens the door, slowly.",
    "The car drives away fast!",
    "Tom looks at Mary.",
]
REFS = [
    "A man walks a dog through the park.",
    "She slowly opens the red door.",
    "A car speeds off.",
    "Tom stares at Mary.",
]


def _coco_reference_numbers(preds, refs, with_meteor=False):
    """pycocoevalcap used as COCOEvalCap.evaluate does: tokenize gts and res separately."""
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r}] for i, r in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    out = {f"BLEU-{i + 1}": 100 * b for i, b in enumerate(bleu)}
    out["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = 100 * Cider().compute_score(gts, res)[0]
    if with_meteor:
        out["METEOR"] = 100 * Meteor().compute_score(gts, res)[0]
    return out


def test_coco_scores_equal_pycocoevalcap():
    ours = coco_scores(PREDS, REFS, ["cider", "bleu", "rouge"])
    theirs = _coco_reference_numbers(PREDS, REFS)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-9), name
    assert ours["CIDEr"] > 0 and 0 < ours["BLEU-1"] < 100


def test_identical_sentences_score_full_marks():
    same = coco_scores(PREDS, PREDS, ["bleu", "rouge"])
    assert same["BLEU-1"] == pytest.approx(100.0)
    assert same["BLEU-4"] == pytest.approx(100.0)
    assert same["ROUGE-L"] == pytest.approx(100.0)


METEOR_PYCOCOEVALCAP = 32.03299275544947
"""pycocoevalcap 1.2's Meteor (meteor-1.5.jar) on PREDS/REFS through `_coco_reference_numbers`
(kept as a number: each METEOR run starts a JVM for ~10 s)."""


@pytest.mark.slow
def test_meteor_in_one_java_call_equals_pycocoevalcap():
    ours = coco_scores(PREDS, REFS, ["meteor"])
    assert ours["METEOR"] == pytest.approx(METEOR_PYCOCOEVALCAP, abs=1e-6)


def test_spice_never_crashes():
    out = coco_scores(PREDS[:1], REFS[:1], ["spice"])
    # offline (CI, this machine) SPICE cannot fetch CoreNLP: reported with the reason
    if isinstance(out["SPICE"], Unavailable):
        assert "CoreNLP" in out["SPICE"].reason
    else:
        assert 0 <= out["SPICE"] <= 100


def _matrix_similarity(matrix):
    """Texts are 'p<i>' / 'r<j>'; the score is matrix[i][j]."""
    m = np.asarray(matrix, dtype=float)

    def sim(preds, refs):
        return np.array([[m[int(p[1:]), int(r[1:])] for r in refs] for p in preds])

    return sim


def test_recall_within_neighbours_hand_computed():
    # 7 slots, windows of 4 with stride 2: [0..3] and [2..5]; slot 6 is an incomplete tail
    m = np.full((7, 7), 0.1)
    np.fill_diagonal(m, 0.5)
    m[1, 3] = 0.9  # in window 1, row 1: one reference beats its own
    m[2, 0] = 0.8
    m[2, 1] = 0.7  # row 2 in window 1: two beat it; window 2 (cols 2..5): none
    m[4, 5] = 0.6  # window 2, row 4: one beats it
    m[6, 0] = 0.99  # the tail never counts
    sim = _matrix_similarity(m)
    preds = [f"p{i}" for i in range(7)]
    refs = [f"r{i}" for i in range(7)]
    hits1 = recall_hits(preds, refs, sim, k=1, n=4, stride=2)
    # window 1 rows 0,1,2,3: hit, miss, miss, hit; window 2 rows 2,3,4,5: hit, hit, miss, hit
    assert hits1 == [True, False, False, True, True, True, False, True]
    assert recall_at_k_within_neighbours(preds, refs, sim, k=1, n=4, stride=2) == 62.5
    # k=2: only row 2 of window 1 (two references above its own) misses
    assert recall_at_k_within_neighbours(preds, refs, sim, k=2, n=4, stride=2) == 87.5
    short = recall_at_k_within_neighbours(preds[:3], refs[:3], sim, k=1, n=4, stride=2)
    assert isinstance(short, Unavailable) and "at least 4" in short.reason


def test_match_by_time_iou():
    preds = [Cue(0.0, 2.0, "a"), Cue(5.1, 7.0, "b"), Cue(20.0, 22.0, "lost")]
    refs = [Cue(5.0, 7.0, "B"), Cue(0.0, 2.2, "A"), Cue(10.0, 12.0, "unsaid")]
    matches, un_p, un_r = match_by_time(preds, refs, min_iou=0.5)
    assert [(m.prediction.text, m.reference.text) for m in matches] == [("a", "A"), ("b", "B")]
    assert matches[0].iou == pytest.approx(2.0 / 2.2)
    assert [c.text for c in un_p] == ["lost"] and [c.text for c in un_r] == ["unsaid"]


def _write_pair(tmp_path):
    pred = tmp_path / "film.ad.json"
    slots = [
        {"index": i, "start": 10.0 * i + 0.1, "end": 10.0 * i + 3.0, "text": t}
        for i, t in enumerate(PREDS)
    ]
    slots.append({"index": 4, "start": 90.0, "end": 93.0, "text": "Nobody said this."})
    pred.write_text(json.dumps({"film": "film", "slots": slots[::-1]}))
    ref = tmp_path / "film.ref.csv"
    rows = [f'{10.0 * i},{10.0 * i + 3.0},"{t}"' for i, t in enumerate(REFS)]
    ref.write_text("start,end,text\n" + "\n".join(rows) + "\n")
    return pred, ref


def test_evaluate_report(tmp_path):
    pred, ref = _write_pair(tmp_path)
    pair_calls = []

    def pair_score(p, r):
        pair_calls.append(len(p))
        return np.array(
            [1.0 if a.split()[0] == b.split()[0] else 0.5 for a, b in zip(p, r, strict=True)]
        )

    report = evaluate(
        pred,
        ref,
        metrics="cider,bleu,rouge,bertscore,recall",
        bert_pair_score=pair_score,
        recall_similarity=_matrix_similarity(np.eye(4)),
    )
    assert (report["predictions"], report["references"], report["matched"]) == (5, 4, 4)
    assert report["unmatched_predictions"] == [
        {"film": "film", "start": 90.0, "end": 93.0, "text": "Nobody said this."}
    ]
    assert report["unmatched_references"] == []
    direct = coco_scores(PREDS, REFS, ["cider", "bleu", "rouge"])
    for name, value in direct.items():
        assert report["metrics"][name] == pytest.approx(value)
    # first words: A/A, She/She, The/A, Tom/Tom → (1 + 1 + .5 + 1) / 4
    assert report["metrics"]["BertScore"] == pytest.approx(87.5)
    assert pair_calls == [4]  # one batched call
    assert report["unavailable"] == {"R@5/16": "needs at least 16 matched slots in a film"}
    out = write_report(report, tmp_path / "report.json")
    assert json.loads(out.read_text())["metrics"]["CIDEr"] == pytest.approx(direct["CIDEr"])


def test_bertscore_offline_is_reported_unavailable(tmp_path):
    pred, ref = _write_pair(tmp_path)
    report = evaluate(pred, ref, metrics="bertscore", bert_model="no-such-org/no-such-bert")
    assert report["metrics"] == {}
    assert "no-such-org/no-such-bert" in report["unavailable"]["BertScore"]


def test_bertscore_with_a_local_model(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] a man walks his dog the car drives away she".split()
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt"), model_max_length=64).save_pretrained(tmp_path)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(cfg).save_pretrained(tmp_path)
    f1 = bertscore_f1(str(tmp_path))
    scores = f1(["a man walks his dog", "she drives"], ["A man walks his dog", "the car"])
    assert scores[0] == pytest.approx(1.0)  # lower-cased: identical
    assert scores[1] < 0.99
    sim = pairwise_similarity(f1)(["a man", "the car"], ["a man", "the car", "she"])
    assert sim.shape == (2, 3)
    assert sim[0, 0] == pytest.approx(1.0) and sim[1, 1] == pytest.approx(1.0)
    assert sim[0, 1] == pytest.approx(sim[1, 0], abs=1e-6)  # F1 is symmetric


def test_bad_input(tmp_path):
    pred, ref = _write_pair(tmp_path)
    with pytest.raises(LocomadError, match="unknown metric 'blue'"):
        parse_metrics("cider,blue")
    empty = tmp_path / "empty.csv"
    empty.write_text("start,end\n1,2\n")
    with pytest.raises(LocomadError, match="no reference with text"):
        evaluate(pred, empty, metrics="cider")
    with pytest.raises(LocomadError, match="cannot read"):
        evaluate(tmp_path / "missing.json", ref, metrics="cider")


def test_cli_evaluate(tmp_path):
    from typer.testing import CliRunner

    from locomad_cli.cli import app

    pred, ref = _write_pair(tmp_path)
    out = tmp_path / "report.json"
    args = ["evaluate", str(pred), "--reference", str(ref), "--metrics", "bleu", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "BLEU-1" in result.output
    assert json.loads(out.read_text())["matched"] == 4
    bad = tmp_path / "bad.json"
    result = CliRunner().invoke(
        app, ["evaluate", str(pred), "-r", str(ref), "-o", str(bad), "--metrics", "x"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("locomad: error: unknown metric 'x' (choose")
    assert not bad.exists()


def test_empty_prediction_is_scored_not_skipped(tmp_path):
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"slots": [{"start": 0, "end": 2, "text": ""}]}))
    ref = tmp_path / "r.csv"
    ref.write_text("start,end,text\n0,2,A man walks.\n")
    report = evaluate(pred, ref, metrics="bleu,rouge")
    assert report["matched"] == 1
    assert report["metrics"]["BLEU-1"] == pytest.approx(0.0, abs=1e-6)
    assert report["metrics"]["ROUGE-L"] == 0.0


def test_evaluate_folders_pools_films(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    for f, film in enumerate(["alpha", "beta"]):
        ids = range(5 * f, 5 * f + 5)
        slots = [{"start": 10.0 * i, "end": 10.0 * i + 2, "text": f"p{i}"} for i in ids]
        (pred_dir / f"{film}.ad.json").write_text(json.dumps({"slots": slots}))
        rows = "".join(f"{10.0 * i},{10.0 * i + 2},r{i}\n" for i in ids)
        (ref_dir / f"{film}.ad.csv").write_text("start,end,text\n" + rows)
    (pred_dir / "gamma.ad.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nx\n")
    m = np.full((10, 10), 0.1)
    np.fill_diagonal(m, 0.5)
    m[6, 7] = 0.9  # film beta, its row 1: another reference ranks first
    report = evaluate(
        pred_dir,
        ref_dir,
        metrics="recall",
        recall_similarity=_matrix_similarity(m),
        recall_k=1,
        recall_n=4,
    )
    assert [(f["film"], f["matched"]) for f in report["films"]] == [("alpha", 5), ("beta", 5)]
    assert report["films_without_reference"] == ["gamma"]
    assert report["matched"] == 10
    # one window of 4 per film (stride 8): 8 rows, one miss
    assert report["metrics"] == {"R@1/4": 87.5}
    with pytest.raises(LocomadError, match="two files or two folders"):
        evaluate(pred_dir, ref_dir / "alpha.ad.csv", metrics="recall")


def test_cli_unavailable_metric_is_exit_1_unless_allowed(tmp_path):
    from typer.testing import CliRunner

    from locomad_cli.cli import app

    pred, ref = _write_pair(tmp_path)
    empty = tmp_path / "corenlp"  # a folder without CoreNLP's jars
    empty.mkdir()
    base = ["evaluate", str(pred), "-r", str(ref), "-o", str(tmp_path / "r.json"), "-q"]
    args = [*base, "--metrics", "bleu,spice", "--corenlp", str(empty)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "locomad: error: 1 requested metric(s) unavailable: SPICE (reasons in the table and "
        "the report); pass --allow-missing to accept the scores without them"
    ]
    report = json.loads((tmp_path / "r.json").read_text())
    assert "BLEU-1" in report["metrics"]
    assert f"in {empty}" in report["unavailable"]["SPICE"]
    assert "--corenlp DIR" in report["unavailable"]["SPICE"]
    res = CliRunner().invoke(app, [*args, "--allow-missing"])
    assert res.exit_code == 0 and res.stderr == ""
    res = CliRunner().invoke(
        app, [*base, "--metrics", "bertscore", "--bert-model", "no-such-org/no-bert"]
    )
    assert res.exit_code == 1
    why = json.loads((tmp_path / "r.json").read_text())["unavailable"]["BertScore"]
    assert "--bert-model DIR" in why
