"""Describe: a film, its features and slots in, an AD track out.

The recurrent loop over one film's slots (`film`), and many films under one model start-up,
shared among a launcher's processes (`many`).
"""
