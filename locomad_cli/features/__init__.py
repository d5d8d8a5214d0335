"""Features: a film in, CLIP frame features out.

Probe and decode the video at exact times (`video`), several decord readers at once
(`parallel`), encode the frames with CLIP (`clip`), save them resumably beside the film
(`extract`), and judge whether the footage looks like the model's training films (`familiar`).
"""
