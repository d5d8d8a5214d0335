"""Tracks: timed text in and out.

Reading subtitles and timed AD files (SRT, WebVTT, CSV, JSON) into cues (`readers`), and
writing an AD track as SRT, WebVTT, JSON and DAPT (`writers`), and the QC rules every
description passes before it joins a track (`rules`).
"""
