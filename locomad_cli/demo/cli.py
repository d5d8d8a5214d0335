"""`locomad demo ...`: the embedded demo's commands (render the world's films, train its
small model from nothing, measure and probe it), a Typer group that cli.py adds to `locomad`."""

from __future__ import annotations

import typer
from typer import Argument, Option

from locomad_cli.cli_common import (
    HELP_OPTION,
    MODEL_HELP,
    THREADS_OPTION,
    from_params,
    one_line_errors,
    result_line,
    threads_arg,
)

demo_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)


@demo_app.callback()
def _demo(_help: bool = HELP_OPTION) -> None:
    """The embedded demo: a rendered film world, its data and its small model."""


@demo_app.command("make-data")
@one_line_errors
def demo_make_data_cmd(
    out_dir: str = Argument(..., help="Folder for train/, val/ and test/ films."),
    seed: int = Option(0, "--seed", help="World seed: same seed, same films."),
    films: int = Option(60, "--films", help="Films in all."),
    val: int = Option(6, "--val", help="Validation films."),
    test: int = Option(6, "--test", help="Held-out films (the last ones)."),
    cast: int = Option(3, "--cast", help="Characters per film (1-4)."),
    fps: float = Option(10.0, "--fps", help="Frame rate of the MP4s."),
    dialogue_intro: float = Option(
        1.0, "--dialogue-intro", help="Chance a newcomer is named by dialogue instead of the AD."
    ),
    features: bool = Option(True, "--features/--no-features", help="Extract frame features too."),
    model: str = Option("demo", "--model", "-m", help="Card whose CLIP makes features."),
    threads: str = THREADS_OPTION,
) -> None:
    """Render demo films (MP4 + subtitles + reference AD) in the folder-of-films layout."""
    params = dict(locals())
    from locomad_cli.demo.data import DemoDataConfig, make_data

    n_threads = threads_arg(threads)
    cfg = from_params(DemoDataConfig, params)
    out = make_data(out_dir, cfg, features=features, card=model, progress=True, threads=n_threads)
    typer.echo(
        ", ".join(f"{len(v)} {k}" for k, v in out.items()) + f" films in {out_dir}", err=True
    )


@demo_app.command("train-clip")
@one_line_errors
def demo_train_clip_cmd(
    data: str = Argument(..., help="Demo data folder (from make-data)."),
    out: str = Option(
        "weights/demo/clip.safetensors", "--out", "-o", help="The trained CLIP weights."
    ),
    model: str = Option("demo", "--model", "-m", help="Card whose CLIP is trained."),
    steps: int = Option(600, "--steps", help="Optimizer steps."),
    batch_size: int = Option(64, "--batch-size", help="Images per batch."),
    seed: int = Option(0, "--seed", help="Random seed."),
    threads: str = THREADS_OPTION,
) -> None:
    """Train the demo card's small CLIP contrastively on demo frames (open_clip's loss)."""
    from locomad_cli.card import load_card
    from locomad_cli.demo.clip_train import train_clip
    from locomad_cli.threads import torch_threads

    n_threads = threads_arg(threads)
    card = load_card(model)
    with torch_threads(n_threads, decoding=False, device="cpu"):
        r = train_clip(data, card, out, steps=steps, batch_size=batch_size, seed=seed)
    typer.echo(
        f"wrote {out}: val caption->frame R@1 {r['val_r1_random']:.2f} at random init, "
        f"{r['val_r1_trained']:.2f} trained (chance {r['chance']:.2f})",
        err=True,
    )


@demo_app.command("tokenizers")
@one_line_errors
def demo_tokenizers_cmd(
    data: str = Argument(..., help="Demo data folder (from make-data)."),
    out: str = Option("weights/demo", "--out", "-o", help="Folder for the tokenizers."),
    vocab_size: int = Option(1000, "--vocab-size", help="BPE vocabulary size."),
) -> None:
    """Train the demo's PME and LLM tokenizers (byte-level BPE) on the training films' text."""
    from locomad_cli.demo.tokenizers import make_tokenizers

    folders = make_tokenizers(data, out, vocab_size)
    typer.echo("wrote " + ", ".join(str(f) for f in folders), err=True)


@demo_app.command("features")
@one_line_errors
def demo_features_cmd(
    data: str = Argument(..., help="Demo data folder (from make-data)."),
    model: str = Option("demo", "--model", "-m", help="Card whose CLIP makes features."),
    threads: str = THREADS_OPTION,
) -> None:
    """Extract frame features for every demo film (skips films already done)."""
    from locomad_cli.demo.data import extract_demo_features

    n_threads = threads_arg(threads)
    n = extract_demo_features(data, model, threads=n_threads)
    typer.echo(f"{n} films have features", err=True)


@demo_app.command("train")
@one_line_errors
def demo_train_cmd(
    work: str = Argument(..., help="Folder for the demo data and the training runs."),
    weights: str = Option("weights/demo", "--weights", help="Where the model goes."),
    seed: int = Option(0, "--seed", help="World and training seed."),
    films: int = Option(60, "--films", help="Films whose last 12 validate and test."),
    extra_train: int = Option(0, "--extra-films", help="More training films after those."),
    clip_steps: int = Option(2000, "--clip-steps", help="CLIP steps."),
    clip_hard_negatives: bool = Option(
        False,
        "--clip-hard-negatives/--no-clip-hard-negatives",
        help="Train the CLIP against captions with one prop, garment or room swapped "
        "(docs/demo.md).",
    ),
    s1_epochs: int = Option(20, "--s1-epochs", help="Stage-1 epochs."),
    s2_epochs: int = Option(30, "--s2-epochs", help="Stage-2 epochs."),
    s2_visual_contrast: float = Option(
        0.0,
        "--visual-contrast",
        help="Stage 2's visual-contrast weight (`locomad train --visual-contrast`).",
    ),
    rename_names: bool = Option(
        False,
        "--rename-names/--keep-names",
        help="Rename training clips' characters at random from the world's name pool "
        "(`locomad train --rename-names`).",
    ),
    measure: bool = Option(True, "--measure/--no-measure", help="Measure on held-out films."),
    threads: str = THREADS_OPTION,
) -> None:
    """Train the demo model from nothing: data, tokenizers, CLIP, stage 1, stage 2, measure."""
    params = dict(locals())
    from locomad_cli.demo.pipeline import DemoTrainConfig, train_demo
    from locomad_cli.threads import pick_threads

    n = pick_threads(threads_arg(threads), decoding=False, device="cpu")
    cfg = from_params(DemoTrainConfig, params, progress=True, threads=n)
    result = train_demo(cfg)
    _print_scores(result.get("test", {}))


def _print_scores(rows: dict[str, dict[str, float]]) -> None:
    """One line per setting on stdout: CIDEr beside what a listener notices."""
    from locomad_cli.demo.attributes import ATTRIBUTES

    for setting, row in rows.items():
        cells = [f"CIDEr {row['CIDEr']:6.1f}" if "CIDEr" in row else ""]
        cells += [f"{a} {row[a]:.2f}" for a in ATTRIBUTES if a in row]
        if "repeat_rate" in row:
            cells.append(
                f"repeats {row['repeat_rate']:.2f} (ref {row['reference_repeat_rate']:.2f})"
            )
        result_line(f"{setting:18s} " + "  ".join(c for c in cells if c))


def _demo_model(model: str, weights: str | None):
    """The model `demo measure` and `demo probe` score: a card, its weights or --weights."""
    from locomad_cli.card import load_card
    from locomad_cli.model.checkpoint import load_model

    card = load_card(model)
    if weights:
        card.weights = weights
    return load_model(card)


@demo_app.command("measure")
@one_line_errors
def demo_measure_cmd(
    data: str = Argument(..., help="Demo data folder with features (from make-data)."),
    model: str = Option("demo", "--model", "-m", help=MODEL_HELP),
    weights: str = Option(None, "--weights", help="Model folder.", show_default="the card's"),
    split: str = Option("test", "--split", help="Films to score."),
    settings: str = Option(
        "oracle,recurrent,recurrent-last-k,local",
        "--settings",
        help="Comma list of oracle, oracle-last-k, recurrent, recurrent-last-k, local, stage1.",
    ),
    heard_names: bool = Option(
        False,
        "--heard-names",
        help="Name a character only once the prompt holds the name (llm.names = the world's "
        "48 names, as describe --cast does for a film); without it, the card's llm.names.",
    ),
    threads: str = THREADS_OPTION,
) -> None:
    """Score a model on demo films, slot by slot against world.json: CIDEr, location, look,
    prop, action and name accuracy, and how often a description repeats one of the last 3."""
    from locomad_cli.demo.measure import SETTINGS, measure
    from locomad_cli.threads import torch_threads
    from locomad_cli.utils import parse_choice_list

    n_threads = threads_arg(threads)
    chosen = parse_choice_list(settings, SETTINGS, "--settings")
    demo_model = _demo_model(model, weights)
    if heard_names:
        from locomad_cli.demo.world import NAMES

        demo_model.card.llm.names = list(NAMES)
    with torch_threads(n_threads, decoding=False, device="cpu"):
        scores = measure(demo_model, data, settings=chosen, split=split)
    _print_scores(scores)


@demo_app.command("probe")
@one_line_errors
def demo_probe_cmd(
    data: str = Argument(..., help="Demo data folder with features (from make-data)."),
    model: str = Option("demo", "--model", "-m", help=MODEL_HELP),
    weights: str = Option(None, "--weights", help="Model folder.", show_default="the card's"),
    split: str = Option("test", "--split", help="Held-out films."),
    train_films: int = Option(48, "--train-films", help="Training films the probes are fit on."),
    threads: str = THREADS_OPTION,
) -> None:
    """Where the model loses what its frames show: linear probes and a small sequence reader
    (location, look, prop, action) on frame features, PME queries and the visual prompt, then
    the model with its visual prompt intact, zeroed and shuffled across slots."""
    from locomad_cli.demo.probe import ProbeConfig, probe
    from locomad_cli.threads import torch_threads

    n_threads = threads_arg(threads)
    with torch_threads(n_threads, decoding=False, device="cpu"):
        result = probe(_demo_model(model, weights), ProbeConfig(data, split, train_films))
    _print_scores(result)
