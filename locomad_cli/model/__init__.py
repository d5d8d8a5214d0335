"""The LoCo-MAD model: pme.py (stage 1), dsm.py and decoder.py (stage 2), locomad.py (the
whole), tokenizer.py, checkpoint.py (weights I/O). See docs/model.md."""
