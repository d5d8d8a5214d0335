"""Headless Debian Chromium as the browser tests start it: the flags this machine's closed
network needs (no background connections, no first-run, no sandbox as root)."""

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
