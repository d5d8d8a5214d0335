"""Tokenizers for the demo card, trained with `tokenizers` on the demo corpus.

The demo's language is small (a few hundred words and the name pool), so a byte-level BPE of
~1k tokens learns every name as one token: the decoder can copy a name from its context in one
step. Two are made, as the real cards use two: a lower-casing BERT-style one for the PME's text
side and an OPT-style one for the decoder; both load with `AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from locomad_cli.demo.world import LOOKS, NAMES
from locomad_cli.model.tokenizer import train_bpe
from locomad_cli.utils import LocomadError, atomic_dir


def demo_corpus(root: str | Path) -> list[str]:
    """Every AD and dialogue line of the training films (plus the name pool, so every name
    is a token even if a small data set never drew it)."""
    texts: list[str] = []
    for path in sorted((Path(root) / "train").glob("*.world.json")):
        world = json.loads(path.read_text(encoding="utf-8"))
        texts += [s["text"] for s in world["slots"]]
        texts += [ln["text"] for ln in world["lines"]]
    if not texts:
        raise LocomadError(f"{root}/train: no demo films to train a tokenizer on")
    texts += [f"{n}, {n}. {n}!" for n in NAMES] * 4
    texts += [look.phrase for look in LOOKS]
    return texts


def train_tokenizer(texts: list[str], role: str, vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE for `role` 'pme' (lower-cased, [CLS] … [SEP]) or 'llm' (OPT's specials).
    A space is put before the first word so a name is the same token at a line's start."""
    return train_bpe(
        texts,
        role,
        vocab_size,
        add_prefix_space=True,
        llm_specials=("<s>", "<pad>", "</s>", "<unk>"),
    )


def make_tokenizers(root: str | Path, out_dir: str | Path, vocab_size: int = 1000) -> list[Path]:
    """Train both demo tokenizers on root/train and save them as tokenizers/pme/ and
    tokenizers/llm/ under out_dir: where a checkpoint keeps its own (checkpoint.py), so the
    weights folder holds them once (the checkpoint's copies add only the special tokens,
    which loading adds again to a fresh tokenizer)."""
    texts = demo_corpus(root)
    out = []
    for role in ("pme", "llm"):
        folder = Path(out_dir) / "tokenizers" / role
        # written beside, then swapped in: a reader never sees half a tokenizer folder
        with atomic_dir(folder) as tmp:
            train_tokenizer(texts, role, vocab_size).save_pretrained(str(tmp))
        out.append(folder)
    return out
