"""Evaluate: a predicted track and references in, scores out.

Reading, aligning and reporting (`report`) and the caption metrics themselves (`metrics`).
"""
