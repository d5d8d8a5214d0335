"""Voice: an AD track in, audio a listener hears out.

Each description fitted to its slot and the `voice()` command (`fit`), text to speech
(`tts`, espeak-ng or piper), and the ducked, loudness-normalised mix and deliverables (`mix`).
"""
