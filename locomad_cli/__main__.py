"""`python -m locomad_cli`: the `locomad` command (what `accelerate launch -m` starts)."""

from locomad_cli.cli import main

main()
