"""How many torch threads should `describe` use? One thread against every core, per slot.

Runs `describe()` (what `locomad describe` calls, with `DescribeOptions.threads` set) on the
demo film with its subtitles and AD times, cached features, VAD and shot detection off, so
what is timed is the model writing descriptions. Two models:
  - demo: the shipped demo model (weights/demo: 3-layer 128-wide OPT, 2-layer PME);
  - mid: the demo card with an OPT-125m-sized decoder (12 layers, 768 wide) and a 4-layer
    768-wide PME, random init (built from the card with --set overrides, never downloaded).
Thread counts run interleaved round by round, so a change in the machine's load hits all of
them alike; it prints the median seconds per slot and each count's ratio to one thread, with
the load average before and after. With --cli, also the whole `locomad describe ... --model
demo --threads N` command as a user runs it (start-up included).

    .venv/bin/python benchmarks/threads.py                    # 1 thread vs every core
    .venv/bin/python benchmarks/threads.py --threads 1,2 --rounds 5 --slots 8 --cli
    .venv/bin/python benchmarks/threads.py --threads 1,default --models demo  # the policy
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locomad_cli.threads import available_cores, pick_threads  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
MID = [
    "llm.config.hidden_size=768",
    "llm.config.word_embed_proj_dim=768",
    "llm.config.num_hidden_layers=12",
    "llm.config.ffn_dim=3072",
    "llm.config.num_attention_heads=12",
    "llm.config.max_position_embeddings=512",
    "pme.hidden_size=768",
    "pme.num_layers=4",
    "pme.num_heads=12",
    "pme.intermediate_size=3072",
    "dsm.num_heads=8",  # divides clip.dim (64): the DSM runs at the CLIP width
    "dsm.intermediate_size=3072",
    "llm.min_new_tokens=20",  # random weights: always write the full 20 tokens
]


def first_slots(n: int, out: Path) -> Path:
    """The demo's AD times cut to the first `n` slots (fewer slots: shorter rounds)."""
    from locomad_cli.tracks.readers import read_timed

    cues = read_timed(str(DEMO / "demo.ad-times.srt"))[:n]

    def ts(t: float) -> str:
        return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:06.3f}".replace(".", ",")

    out.write_text("\n".join(f"{i}\n{ts(c.start)} --> {ts(c.end)}\n\n" for i, c in enumerate(cues)))
    return out


def models(tmp: Path) -> dict:
    import torch

    from locomad_cli.card import load_card
    from locomad_cli.features.clip import load_clip
    from locomad_cli.model.checkpoint import load_model
    from locomad_cli.model.locomad import LoCoMAD

    demo_card = load_card("demo")
    encode = load_clip(demo_card).encode_text
    torch.manual_seed(0)
    mid = LoCoMAD.from_card(load_card("demo", MID), pretrained=False).eval()
    params = sum(p.numel() for p in mid.parameters()) / 1e6
    print(f"mid model: {params:.0f} M parameters", flush=True)
    return {"demo": (load_model(demo_card), encode), "mid": (mid, encode)}


def run_describe(model, encode, threads: int, ad_times: Path, out: Path) -> float:
    from locomad_cli.describe.film import DescribeOptions, describe

    opts = DescribeOptions(
        subs=str(DEMO / "demo.srt"),
        ad_times=str(ad_times),
        features=str(DEMO / "demo.features.safetensors"),
        output_dir=str(out),
        formats="json",
        device="cpu",
        vad="off",
        shots="off",
        progress=False,
        threads=threads,
    )
    start = time.perf_counter()
    describe(DEMO / "demo.mp4", opts, model=model, encode_text=encode)
    return time.perf_counter() - start


def run_cli(threads: int, out: Path) -> float:
    cmd = [str(Path(sys.executable).with_name("locomad")), "describe", str(DEMO / "demo.mp4")]
    cmd += ["--subs", str(DEMO / "demo.srt"), "--ad-times", str(DEMO / "demo.ad-times.srt")]
    cmd += ["--model", "demo", "-o", str(out), "-q", "--threads", str(threads)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start


def ensure_features() -> None:
    """The demo film's features, extracted once as a user would (a fresh clone has none)."""
    if not (DEMO / "demo.features.safetensors").is_file():
        cmd = [str(Path(sys.executable).with_name("locomad")), "extract-features"]
        subprocess.run([*cmd, str(DEMO / "demo.mp4"), "--model", "demo"], check=True, cwd=REPO)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--threads", default=f"1,{available_cores()}", help="comma list; 'default' = the policy's"
    )
    ap.add_argument("--models", default="demo,mid", help="comma list of demo, mid")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slots", type=int, default=8, help="demo AD slots per run (of 24)")
    ap.add_argument("--cli", action="store_true", help="also time the whole command")
    args = ap.parse_args()
    counts = [None if t == "default" else int(t) for t in args.threads.split(",")]
    ensure_features()
    print(f"cores available: {available_cores()}; load average before: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="locomad-threads-") as tmp:
        tmp = Path(tmp)
        ad_times = first_slots(args.slots, tmp / "slots.srt")
        built = {k: v for k, v in models(tmp).items() if k in args.models.split(",")}
        times: dict[tuple[str, int | None], list[float]] = {}
        chose: dict[tuple[str, int | None], list[int]] = {}
        for model, encode in built.values():  # warm-up: first calls allocate
            run_describe(model, encode, counts[0], ad_times, tmp / "warm")
        for r in range(args.rounds):
            for name, (model, encode) in built.items():
                for n in counts:
                    picked = pick_threads(n, decoding=False, device="cpu")
                    t = run_describe(model, encode, n, ad_times, tmp / f"{name}{n}r{r}")
                    times.setdefault((name, n), []).append(t / args.slots)
                    chose.setdefault((name, n), []).append(picked)
            if args.cli:
                for n in [c for c in counts if c is not None]:
                    times.setdefault(("cli", n), []).append(run_cli(n, tmp / f"cli{n}r{r}"))
            print(f"round {r + 1}/{args.rounds} done, load {load()}", flush=True)
    print(f"load average after: {load()}")
    print(f"{'model':6s} {'threads':>9s} {'median':>9s} {'runs':>28s} {'/ first':>8s}")
    for (name, n), ts in times.items():
        first = counts[0] if (name, counts[0]) in times else next(c for c in counts if c)
        base = statistics.median(times[(name, first)])
        unit = "s/cmd" if name == "cli" else "s/slot"
        runs = " ".join(f"{t:.3f}" for t in ts)
        med = statistics.median(ts)
        label = str(n) if n is not None else "dflt=" + "/".join(map(str, chose[(name, n)]))
        print(f"{name:6s} {label:>9s} {med:7.3f} {unit} {runs:>28s} {med / base:7.2f}x")


if __name__ == "__main__":
    main()
