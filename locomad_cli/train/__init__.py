"""Train: data and a model card in, trained weights out.

The stage 1 / stage 2 loop on Accelerate (`loop`) and its pickle-free resume state (`state`).
"""
