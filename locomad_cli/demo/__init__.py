"""The embedded demo: a rendered film world (world.py, render.py), its data (data.py), and the
pieces of its small model that are made outside `locomad train` (tokenizers.py, clip_train.py)."""
