"""Features: a film in, CLIP frame features out.

Probe the film once and decode it at exact times (`video`), several decord readers at once
(`parallel`), encode the frames with CLIP (`clip`), save them resumably beside the film
(`extract`, through `cache`: the files beside a film, shared with the slots' speech and shots),
and judge whether the footage looks like the model's training films (`familiar`).
"""
