"""`locomad review`: check, correct, re-voice and approve an AD track in the browser.

`session` holds the actions on one film's track (edit, approve, regenerate, re-voice, export),
`store` saves them (atomic JSON, an undo journal, a version check), `server` puts them behind
a token on a local FastAPI app (`review()`), `cli` is the command. Kept free of imports here:
the command's --help must not load the web stack.
"""
