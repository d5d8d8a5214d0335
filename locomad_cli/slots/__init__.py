"""Slots: a film's soundtrack, shots and subtitles in, the times where a description is spoken out.

Speech found in the soundtrack (`speech`, silero-vad), shot changes (`shots`, PySceneDetect),
and the plan that puts slots in the gaps between them, or reads given AD times (`plan`).
"""
