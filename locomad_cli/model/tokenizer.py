"""Tokenizers for the Q-Former's text side and for the language decoder.

Real cards name a Hugging Face tokenizer (`bert-base-uncased`, `facebook/opt-2.7b`) or a local
folder, loaded with `AutoTokenizer.from_pretrained`. The tiny card says `tiny`: a byte-level BPE
trained in memory on a fixed corpus, so tests and the demo never touch the hub. Byte-level means
any text (names, accents, emoji) encodes without an unknown token.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from locomad_cli.utils import LocomadError, hf_load_kwargs, hub_offline_hint

DEC_TOKEN = "[DEC]"
"""Start token of the Q-Former's generation task (VTG), in place of [CLS] (as in BLIP-2)."""

LLM_SPECIAL_TOKENS = ["<b_q>", "<e_q>", "<b_t>", "<e_t>", "<b_s>", "<e_s>"]
"""Eq. 10-11: visual prompt begin/end, context description begin/end, subtitle begin/end."""

TINY_VOCAB_SIZE = 600

# A fixed corpus in the register of audio description: the tiny BPE learns merges from it.
# Changing it changes every tiny tokenizer (and so invalidates tiny checkpoints' vocabularies,
# which is why checkpoints carry their own tokenizer files).
_TINY_CORPUS = [
    "A man walks into the room and looks around.",
    "She opens the door slowly and steps outside into the rain.",
    "He sits at the table, staring at the letter in his hands.",
    "The car drives along a dark road through the forest.",
    "They stand on the beach and watch the sun set over the sea.",
    "A woman smiles at him across the crowded street.",
    "The boy runs up the stairs and hides under the bed.",
    "Lights flicker in the empty hallway of the old house.",
    "He picks up the phone, listens, then puts it down.",
    "She turns away, tears in her eyes.",
    "Two men fight in the kitchen; a glass shatters on the floor.",
    "The camera pans across the city at night.",
    "Someone knocks at the door. Nobody answers.",
    "The girl holds a red balloon and laughs.",
    "He gets into the car and drives off.",
    "Snow falls on the quiet village.",
    "She reads the newspaper, then looks up at the clock.",
    "They kiss under the tree.",
    "A dog barks at the mailman by the gate.",
    "The train pulls into the station and people get off.",
    "I don't know what you mean. Where were you last night?",
    "We have to leave now, before it's too late!",
    "Later, the family eats dinner together in silence.",
    '0 1 2 3 4 5 6 7 8 9 — what? yes, no: maybe (later) "ok"',
]


def _train_tiny_bpe(role: str) -> PreTrainedTokenizerFast:
    return train_bpe(_TINY_CORPUS, role, TINY_VOCAB_SIZE)


def train_bpe(
    texts: list[str],
    role: str,
    vocab_size: int,
    add_prefix_space: bool = False,
    llm_specials: tuple[str, ...] = ("<pad>", "</s>", "<unk>"),
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained offline on `texts` for `role` 'pme' (lower-cased like
    bert-base-uncased, [CLS] … [SEP]) or 'llm' (OPT's specials: </s> begins and ends)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    if role == "pme":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:
        specials = list(llm_specials)
    tok = Tokenizer(models.BPE(unk_token="[UNK]" if role == "pme" else "<unk>"))
    if role == "pme":
        tok.normalizer = normalizers.Lowercase()  # the real PME tokenizer is bert-base-uncased
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if role == "pme":
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def load_tokenizer(spec: str, role: str) -> PreTrainedTokenizerBase:
    """The tokenizer named by a card (`tiny`, a local folder or a hub id) for `role` 'pme' or
    'llm', with the project's special tokens added ([DEC] for the PME, b_q … e_s for the LLM)."""
    if role not in ("pme", "llm"):
        raise ValueError(f"unknown tokenizer role {role!r}")
    if spec == "tiny":
        tok = _train_tiny_bpe(role)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(spec, **hf_load_kwargs(spec))
        except (OSError, ValueError) as e:
            if Path(spec).expanduser().exists():
                raise LocomadError(f"cannot read the tokenizer in {spec}: {e}") from None
            raise LocomadError(f"tokenizer {hub_offline_hint(spec)}") from None
    add_special_tokens(tok, role)
    return tok


def add_special_tokens(tok: PreTrainedTokenizerBase, role: str) -> None:
    """Idempotent: a tokenizer saved with its special tokens gets nothing new."""
    if role == "pme":
        if DEC_TOKEN not in tok.get_vocab():
            tok.add_special_tokens({"bos_token": DEC_TOKEN})
        elif tok.bos_token != DEC_TOKEN:
            tok.bos_token = DEC_TOKEN
        if tok.pad_token is None:
            tok.pad_token = tok.sep_token
    else:
        missing = [t for t in LLM_SPECIAL_TOKENS if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if tok.eos_token is None:
            raise LocomadError("the language model's tokenizer has no end-of-sequence token")
