import json

import pytest
import torch
from helpers.srt import srt_text
from safetensors.torch import save_file

from locomad_cli.card import tiny_card
from locomad_cli.describe.film import DescribeOptions, describe, oracle_context
from locomad_cli.features.clip import load_clip
from locomad_cli.model.checkpoint import save_model
from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.slots.plan import Slot
from locomad_cli.tracks.readers import Cue
from locomad_cli.utils import LocomadError

DURATION = 20.0
# five AD slots (given in shuffled order) and subtitles around them
AD_TIMES = [(9.0, 11.0), (1.0, 3.0), (4.0, 6.0), (12.0, 14.5), (16.0, 19.0)]
SUBS = [(0.0, 1.2, "Morning."), (5.5, 7.0, "Where is she?"), (12.5, 13.0, "Run!")]
REFS = [
    (1.0, 3.0, "Dawn over the village."),
    (4.0, 6.0, "A man opens the door."),
    (9.0, 11.0, "He walks to the car."),
    (12.0, 14.5, "She runs down the road."),
    (16.0, 19.0, "The car drives off."),
]


def _small_card():
    card = tiny_card()
    card.llm.max_new_tokens = 4
    card.dsm.proposal_len = 3
    card.dsm.top_k = 2
    return card


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return LoCoMAD.from_card(_small_card(), pretrained=False)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(1)
    return load_clip(_small_card()).encode_text


@pytest.fixture
def film(tmp_path):
    """A features file, AD times, subtitles and references for a 20 s film."""
    torch.manual_seed(2)
    card = _small_card()
    feats = torch.randn(int(DURATION * card.fps), card.clip.dim).half()
    meta = {"fps": "5", "duration": f"{DURATION}", "clip_model": card.clip.model, "frames": "100"}
    save_file({"features": feats}, str(tmp_path / "film.features.safetensors"), metadata=meta)
    (tmp_path / "film.ad-times.srt").write_text(srt_text([(a, b, "") for a, b in AD_TIMES]))
    (tmp_path / "film.srt").write_text(srt_text(SUBS))
    (tmp_path / "film.ref.srt").write_text(srt_text(REFS))
    return tmp_path


def _opts(film, **kw):
    base = dict(
        subs=str(film / "film.srt"),
        ad_times=str(film / "film.ad-times.srt"),
        features=str(film / "film.features.safetensors"),
        output_dir=str(film / "out"),
        formats="all",
        device="cpu",
        progress=False,
    )
    base.update(kw)
    return DescribeOptions(**base)


class Spy:
    """Wraps the real model's generate and keeps what each call was given."""

    def __init__(self, model):
        self.model = model
        self.card = model.card
        self.calls = []
        self.avoided = []

    def generate(
        self,
        batch,
        setting="context",
        selection_override=None,
        avoid=None,
        names=None,
        budgets=None,
    ):
        self.calls.append((setting, batch))
        self.avoided.append(avoid)
        self.budgets = budgets
        return self.model.generate(
            batch, setting, selection_override, avoid=avoid, names=names, budgets=budgets
        )


class CountingEncoder:
    def __init__(self, encode):
        self.encode = encode
        self.texts = []

    def __call__(self, texts):
        self.texts.extend(texts)
        return self.encode(texts)


def test_recurrent_proposal_is_the_previous_generated_descriptions(film, tiny_model, encoder):
    spy, enc = Spy(tiny_model), CountingEncoder(encoder)
    track, paths = describe(film / "film.mp4", _opts(film), model=spy, encode_text=enc)
    rows = track["slots"]
    assert [(r["start"], r["end"]) for r in rows] == sorted(AD_TIMES)
    assert [r["subtitles"] for r in rows] == ["Morning.", "Where is she?", "", "Run!", ""]
    assert len(spy.calls) == 5  # one slot per call, in film order
    for i, (setting, batch) in enumerate(spy.calls):
        assert setting == "context"
        want = rows[max(0, i - 3) : i]  # proposal_len = 3
        got = batch.contexts[0]
        assert [c.text for c in got] == [r["text"] for r in want]
        assert [c.subtitle for c in got] == [r["subtitles"] for r in want]
        assert [(c.start, c.end) for c in got] == [(r["start"], r["end"]) for r in want]
        assert int(batch.context_mask[0].sum()) == len(want)
        for j, r in enumerate(want):
            expect = encoder([r["text"]])[0]
            assert torch.allclose(batch.context_features[0, j], expect, atol=1e-5)
        sel = rows[i]["selected"]
        assert all(s["text"] in [r["text"] for r in want] for s in sel)
        assert len(sel) == min(2, len(want))  # top_k = 2
    # each description is encoded once, when it first enters a proposal (the last never does)
    assert sorted(enc.texts) == sorted(dict.fromkeys(r["text"] for r in rows[:-1]))
    assert sorted(p.name for p in paths) == ["film.ad.json", "film.ad.srt", "film.ad.vtt"]
    assert not (film / "out" / "film.ad.progress.jsonl").exists()
    saved = json.loads((film / "out" / "film.ad.json").read_text())
    assert saved == track and saved["setting"] == "recurrent" and saved["card"] == "tiny"


def test_oracle_proposal_is_the_earlier_references(film, tiny_model, encoder):
    spy = Spy(tiny_model)
    opts = _opts(film, setting="oracle", reference=str(film / "film.ref.srt"), batch_size=2)
    track, _ = describe(film / "film.mp4", opts, model=spy, encode_text=encoder)
    assert [len(b) for _, b in spy.calls] == [2, 2, 1]
    contexts = [ctx for _, b in spy.calls for ctx in b.contexts]
    want = [
        [],
        ["Dawn over the village."],
        ["Dawn over the village.", "A man opens the door."],
        ["Dawn over the village.", "A man opens the door.", "He walks to the car."],
        ["A man opens the door.", "He walks to the car.", "She runs down the road."],
    ]
    assert [[c.text for c in ctx] for ctx in contexts] == want
    # references carry the subtitles said during them
    assert [c.subtitle for c in contexts[2]] == ["Morning.", "Where is she?"]
    assert track["setting"] == "oracle" and all(s == "context" for s, _ in spy.calls)


def test_local_proposal_is_empty(film, tiny_model, encoder):
    spy = Spy(tiny_model)
    track, _ = describe(
        film / "f.mp4", _opts(film, setting="local"), model=spy, encode_text=encoder
    )
    assert [s for s, _ in spy.calls] == ["local"]
    batch = spy.calls[0][1]
    assert batch.contexts == [[]] * 5 and not batch.context_mask.any()
    assert all(r["selected"] == [] for r in track["slots"])


def test_oracle_context_rule():
    refs = [Cue(1, 2, "a"), Cue(3, 4, "b"), Cue(5, 6, "c"), Cue(7, 8, "d")]
    assert [c.text for c in oracle_context(refs, Slot(5, 6, 2), 2)] == ["a", "b"]
    assert [c.text for c in oracle_context(refs, Slot(9, 10, 4), 3)] == ["b", "c", "d"]
    assert oracle_context(refs, Slot(0.5, 1, 0), 3) == []


class Crash(Exception):
    pass


def test_resume_equals_uninterrupted(film, tiny_model, encoder):
    full, _ = describe(
        film / "film.mp4",
        _opts(film, output_dir=str(film / "a")),
        model=tiny_model,
        encode_text=encoder,
    )
    seen = []

    def die_after_two(row):
        seen.append(row)
        if len(seen) == 2:
            raise Crash()

    opts = _opts(film, output_dir=str(film / "b"))
    with pytest.raises(Crash):
        describe(
            film / "film.mp4",
            opts,
            model=tiny_model,
            encode_text=encoder,
            on_description=die_after_two,
        )
    out = film / "b"
    assert sorted(p.name for p in out.iterdir()) == ["film.ad.progress.jsonl"]
    assert len((out / "film.ad.progress.jsonl").read_text().splitlines()) == 3  # header + 2
    with open(out / "film.ad.progress.jsonl", "a") as f:
        f.write('{"index": 2, "sta')  # the line being written when the process died
    with pytest.raises(LocomadError, match="pass --resume"):
        describe(film / "film.mp4", opts, model=tiny_model, encode_text=encoder)
    spy = Spy(tiny_model)
    opts.resume = True
    resumed, _ = describe(film / "film.mp4", opts, model=spy, encode_text=encoder)
    assert len(spy.calls) == 3  # only the slots that were missing
    assert resumed == full
    for ext in ("srt", "vtt", "json"):
        assert (out / f"film.ad.{ext}").read_bytes() == (film / "a" / f"film.ad.{ext}").read_bytes()
    assert not (out / "film.ad.progress.jsonl").exists()


def test_resume_refuses_another_runs_progress(film, tiny_model, encoder):
    out = film / "out"
    out.mkdir()
    (out / "film.ad.progress.jsonl").write_text(json.dumps({"identity": {"video": "x"}}) + "\n")
    with pytest.raises(LocomadError, match="belongs to another run"):
        describe(film / "film.mp4", _opts(film, resume=True), model=tiny_model, encode_text=encoder)


def _card_file(tmp_path, card, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(card.to_yaml())
    return str(path)


def test_bad_input_leaves_no_files(film, tiny_model, encoder):
    out = film / "out"
    card_path = _card_file(film, _small_card())
    good_weights = film / "weights-good"
    save_model(tiny_model, good_weights)

    def fails(match, **kw):
        kw.setdefault("weights", str(good_weights))
        with pytest.raises(LocomadError, match=match):
            describe(film / "film.mp4", _opts(film, model=card_path, **kw))
        assert not out.exists()

    # subtitles over the whole film and no --ad-times: nowhere to speak
    (film / "talk.srt").write_text(srt_text([(0.0, 10.0, "Talk."), (11.0, 20.0, "More.")]))
    fails("no AD slot possible", ad_times=None, subs=str(film / "talk.srt"))
    (film / "junk.srt").write_bytes(b"\xff\xfe\x00garbage")
    fails("junk.srt:1: no readable cue", subs=str(film / "junk.srt"))
    # the tiny card has weights: null; said first, before any other work
    fails("no trained LoCo-MAD weights for model card 'tiny'", weights=None, subs="missing.srt")
    fails(r"--weights .*nowhere: no such folder", weights=str(film / "nowhere"))
    fails("hub is unreachable", weights="some-org/locomad-weights")
    other = _small_card()
    other.pme.num_layers = 4
    wdir = film / "weights-other"
    save_model(LoCoMAD.from_card(other, pretrained=False), wdir)
    fails(r"another architecture than card 'tiny'.*pme.num_layers: 4 vs 2", weights=str(wdir))
    (film / "past.csv").write_text("start,end\n1,2\n18,25\n")
    fails("past.csv:3: slot ends at 25.000s, past the film's end", ad_times=str(film / "past.csv"))
    fails("oracle needs --reference", setting="oracle")


def test_cli_describe_with_weights(film, tiny_model):
    from typer.testing import CliRunner

    from locomad_cli.cli import app

    wdir = film / "weights"
    save_model(tiny_model, wdir)
    card_path = _card_file(film, _small_card())
    args = [
        "describe",
        str(film / "film.mp4"),
        "--model",
        card_path,
        "--weights",
        str(wdir),
        "--features",
        str(film / "film.features.safetensors"),
        "--subs",
        str(film / "film.srt"),
        "--ad-times",
        str(film / "film.ad-times.srt"),
        "-o",
        str(film / "out"),
        "-f",
        "srt,json",
        "--device",
        "cpu",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((film / "out" / "film.ad.json").read_text())
    assert len(data["slots"]) == 5 and data["weights"] == str(wdir.resolve())
    assert sorted(p.name for p in (film / "out").iterdir()) == ["film.ad.json", "film.ad.srt"]
    bad = CliRunner().invoke(app, [*args, "--setting", "nope"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        "locomad: error: unknown setting 'nope' (choose recurrent, oracle, local)"
    ]


@pytest.mark.slow
def test_features_extracted_once_then_reused(tmp_path, tiny_model):
    from helpers.media import make_video

    video = make_video(tmp_path / "clip.mp4", duration=4.0, size="64x48")
    wdir = tmp_path / "weights"
    save_model(tiny_model, wdir)
    card_path = _card_file(tmp_path, _small_card())
    (tmp_path / "times.csv").write_text("start,end\n0.5,1.5\n2.0,3.5\n")
    opts = DescribeOptions(
        model=card_path,
        weights=str(wdir),
        ad_times=str(tmp_path / "times.csv"),
        output_dir=str(tmp_path / "out"),
        formats="json",
        device="cpu",
        progress=False,
    )
    track, _ = describe(video, opts)
    cache = tmp_path / "out" / "clip.features.safetensors"
    assert cache.is_file() and [(s["start"], s["end"]) for s in track["slots"]] == [
        (0.5, 1.5),
        (2.0, 3.5),
    ]
    from locomad_cli.features.extract import load_features

    feats, meta = load_features(cache)
    assert feats.shape == (20, 32) and meta["fps"] == 5.0
    stamp = cache.stat().st_mtime_ns
    describe(video, opts)
    assert cache.stat().st_mtime_ns == stamp  # reused, not recomputed


def _repeats(texts, window=3):
    low = [" ".join(t.lower().split()) for t in texts]
    return [i for i in range(len(low)) if low[i] in low[max(0, i - window) : i]]


def test_recurrent_descriptions_do_not_repeat_the_last_three(film, tiny_model, encoder):
    """llm.avoid_repeats: the random tiny model copies itself; with the constraint no
    description equals one of the previous three, and the track is the unconstrained one up
    to its first repeat."""
    card = tiny_model.card
    try:
        card.llm.avoid_repeats = 0
        free, _ = describe(
            film / "film.mp4",
            _opts(film, output_dir=str(film / "a")),
            model=tiny_model,
            encode_text=encoder,
        )
        card.llm.avoid_repeats = 3
        spy = Spy(tiny_model)
        held, _ = describe(
            film / "film.mp4",
            _opts(film, output_dir=str(film / "b")),
            model=spy,
            encode_text=encoder,
        )
    finally:
        card.llm.avoid_repeats = 3
    free_texts = [r["text"] for r in free["slots"]]
    held_texts = [r["text"] for r in held["slots"]]
    first = _repeats(free_texts)
    assert first, free_texts  # the unconstrained random model does repeat itself
    assert _repeats(held_texts) == []
    assert held_texts[: first[0]] == free_texts[: first[0]]
    assert held_texts[first[0]] != free_texts[first[0]]
    # what each call was told to avoid: the previous three generated descriptions
    assert spy.avoided == [[held_texts[max(0, i - 3) : i]] for i in range(len(held_texts))]
