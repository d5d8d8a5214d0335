"""The demo film world: the plot of a short film, as data, before any pixel is drawn.

A film is a list of AD slots (an action shown over 2-4 s, with its reference description)
and dialogue cues placed in the gaps between slots, so AD never talks over dialogue. Each
film draws its cast's names afresh from a pool: a name can only be learnt from the film's own
context — the description that introduces a character ("A man in a green coat, Tom, enters
the kitchen.") or a line of dialogue that greets them right after an unnamed entrance. The
plot generator keeps every named mention within `window` items of the character's last
introduction, so a context proposal of that length always holds the answer, while the last
few items often do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FEMALE_NAMES = (
    "Mira Anna Lena Sara Nora Ida Eva Lisa Maya Rosa Alma Vera "
    "Iris Zoe Nina Ruth Clara Hana Lucy Ella Greta Olga Tina Amy"
).split()
MALE_NAMES = (
    "Tom Leo Max Ben Sam Omar Paul Hugo Ivan Jack Karl Luis "
    "Noah Otto Raj Theo Umar Vic Will Yuri Adam Carl Dan Eli"
).split()
NAMES = FEMALE_NAMES + MALE_NAMES


@dataclass(frozen=True)
class Look:
    """How a character appears: drawn shape and colours, and the words AD uses for it."""

    noun: str
    """man | woman | boy | girl | old man (chooses pronoun and name pool)."""
    garment: str
    """'green coat' — the words after 'in a'."""
    body: tuple[int, int, int]
    shape: str
    """rect | dress | square: the body's outline."""
    height: int
    """Pixels from feet to the top of the head (standing)."""
    hair: tuple[int, int, int]
    hat: bool = False

    @property
    def female(self) -> bool:
        return self.noun in ("woman", "girl")

    @property
    def phrase(self) -> str:
        """'a man in a green coat', 'an old man in an orange jacket'."""
        return f"{_a(self.noun)} {self.noun} in {_a(self.garment)} {self.garment}"


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


LOOKS = (
    Look("man", "green coat", (40, 160, 60), "rect", 46, (60, 40, 20)),
    Look("woman", "red dress", (210, 40, 40), "dress", 44, (30, 20, 10)),
    Look("boy", "yellow shirt", (235, 205, 40), "square", 32, (120, 70, 30)),
    Look("girl", "purple dress", (140, 60, 190), "dress", 32, (200, 150, 60)),
    Look("old man", "grey coat", (130, 130, 130), "rect", 44, (235, 235, 235)),
    Look("woman", "orange jacket", (240, 130, 20), "rect", 44, (20, 20, 20)),
    Look("man", "blue suit", (30, 50, 150), "rect", 48, (20, 20, 20), hat=True),
    Look("woman", "pink coat", (240, 120, 180), "dress", 46, (150, 80, 30), hat=True),
)


@dataclass(frozen=True)
class Prop:
    name: str
    """'red key' — AD says 'the red key'."""
    color: tuple[int, int, int]
    shape: str
    """key | cup | book | bottle | letter | ball"""


PROPS = (
    Prop("red key", (230, 30, 30), "key"),
    Prop("blue cup", (40, 90, 230), "cup"),
    Prop("yellow book", (245, 215, 30), "book"),
    Prop("green bottle", (30, 170, 70), "bottle"),
    Prop("white letter", (250, 250, 250), "letter"),
    Prop("orange ball", (250, 140, 20), "ball"),
)


@dataclass(frozen=True)
class Location:
    name: str
    """'kitchen' — AD says 'the kitchen'."""
    seat: str
    """What characters sit on: 'chair', 'bench', 'sofa' …"""
    surface: str
    """Where props lie: 'table', 'desk' …"""
    outdoor: bool
    at: str = "in"
    """Preposition for 'in the kitchen' / 'on the beach'."""


LOCATIONS = (
    Location("kitchen", "stool", "table", False),
    Location("garden", "bench", "low wall", True),
    Location("living room", "sofa", "side table", False),
    Location("street", "bench", "crate", True, "on"),
    Location("office", "chair", "desk", False),
    Location("beach", "deck chair", "cooler", True, "on"),
)


@dataclass
class Character:
    name: str
    look: Look

    @property
    def pronoun(self) -> str:
        return "her" if self.look.female else "his"


@dataclass
class Action:
    """One AD slot's event: what the renderer animates and what the description says."""

    kind: str
    actor: int | None = None
    """Index into the cast (None for ambient events)."""
    other: int | None = None
    """The second character (give, meet, wave)."""
    prop: int | None = None
    """Index into PROPS."""
    location: int = 0
    """Index into LOCATIONS (the scene's place)."""


@dataclass
class Slot:
    start: float
    end: float
    action: Action
    text: str
    """Reference AD: present tense, names once introduced."""
    caption: str
    """The same event with every name replaced by its look ('the man in the green coat …'):
    the text side for contrastive CLIP training, where names carry no visual meaning."""
    names: list[str] = field(default_factory=list)
    """Cast names this description uses."""
    binds: list[str] = field(default_factory=list)
    """Names this item binds to a look (in its own text or in the dialogue right after it)."""


@dataclass
class Line:
    """A dialogue cue in a gap between slots."""

    start: float
    end: float
    text: str
    speaker: int | None = None
    binds: list[str] = field(default_factory=list)
    """Names this line introduces (a greeting right after an unnamed entrance)."""


@dataclass
class Film:
    name: str
    seed: int
    cast: list[Character]
    props: list[int]
    """Indices into PROPS used in this film."""
    slots: list[Slot]
    lines: list[Line]
    duration: float

    def introductions(self) -> dict[str, float]:
        """Name → time it is first made learnable (end of the introducing slot or line)."""
        seen: dict[str, float] = {}
        events = [(s.end, [n for n in s.binds if n in s.names]) for s in self.slots] + [
            (ln.end, ln.binds) for ln in self.lines
        ]
        for t, names in sorted(events, key=lambda e: e[0]):
            for n in names:
                seen.setdefault(n, t)
        return seen


def _pick_cast(rng: np.random.Generator, n: int) -> list[Character]:
    looks = [LOOKS[i] for i in rng.choice(len(LOOKS), size=n, replace=False)]
    female = [n for n in FEMALE_NAMES]
    male = [n for n in MALE_NAMES]
    cast = []
    for look in looks:
        pool = female if look.female else male
        name = pool.pop(int(rng.integers(len(pool))))
        cast.append(Character(name, look))
    return cast


class _Plot:
    """Builds one film's slots and lines step by step, tracking who is where.

    Hand-written because the world's rules (who may act, who holds what, when a name is
    known) are the demo's specification; no library models a toy screenplay."""

    def __init__(
        self,
        rng: np.random.Generator,
        cast: list[Character],
        props: list[int],
        window: int,
        dialogue_intro: float,
    ) -> None:
        self.rng = rng
        self.cast = cast
        self.props = props
        self.window = window
        self.dialogue_intro = dialogue_intro
        self.items: list[tuple[Action, str, str, list[str], list[str]]] = []
        self.lines_after: dict[int, tuple[str, int | None, list[str]]] = {}
        self.present: list[int] = []
        self.sitting: set[int] = set()
        self.fallen: set[int] = set()
        self.holder: dict[int, int | None] = {}
        self.named: set[int] = set()
        self.bound_at: dict[int, int] = {}
        self.location = 0
        self._here: list[int] = []

    # --- helpers -------------------------------------------------------------------------
    def _fresh(self, c: int) -> bool:
        """A name may be used when its last binding item is inside the context window."""
        return c in self.bound_at and len(self.items) - self.bound_at[c] < self.window

    def _ref(self, c: int) -> tuple[str, str]:
        ch = self.cast[c]
        return ch.name, f"the {ch.look.noun} in the {ch.look.garment}"

    def _add(
        self,
        action: Action,
        text: str,
        caption: str,
        names: list[str],
        binds: list[str] | None = None,
    ) -> None:
        self.items.append((action, text, caption, names, binds or []))

    def _say(self, text: str, speaker: int | None, binds: list[str] | None = None) -> None:
        """Dialogue in the gap right after the last item; `binds` = names it introduces."""
        self.lines_after[len(self.items) - 1] = (text, speaker, binds or [])

    def _loc(self) -> Location:
        return LOCATIONS[self.location]

    def _cap(self, s: str) -> str:
        return s[0].upper() + s[1:]

    # --- events --------------------------------------------------------------------------
    def establish(self, location: int) -> None:
        self.location = location
        self.present, self.sitting, self.fallen = [], set(), set()
        loc = self._loc()
        lying = [p for p, h in self.holder.items() if h is None and p in self.here]
        if lying and self.rng.random() < 0.6:
            p = PROPS[lying[0]].name
            text = f"{loc.at.title()} the {loc.name}, {_a(p)} {p} lies on the {loc.surface}."
        else:
            text = self.rng.choice(
                [
                    f"The {loc.name} is empty.",
                    f"The {loc.name} is quiet.",
                    f"A wide view of the {loc.name}.",
                ]
            )
        placed = self.here[0] if self.here else None
        self._add(Action("establish", prop=placed, location=location), text, text, [])

    def enter(self, c: int) -> None:
        ch = self.cast[c]
        loc = self._loc().name
        look = ch.look.phrase
        act = Action("enter", actor=c, location=self.location)
        caption = f"{self._cap(look)} enters the {loc}."
        if c not in self.named:
            others = [o for o in self.present if self._fresh(o)]
            if others and self.rng.random() < self.dialogue_intro:
                # unnamed entrance, then someone greets them by name right after
                self._add(act, caption, caption, [], [ch.name])
                greeter = others[0]
                self._say(
                    self.rng.choice([f"Hello, {ch.name}.", f"{ch.name}! You came."]),
                    greeter,
                    [ch.name],
                )
            elif self.rng.random() < self.dialogue_intro:
                self._add(act, caption, caption, [], [ch.name])
                self._say(
                    self.rng.choice([f"I'm {ch.name}.", f"My name is {ch.name}."]), c, [ch.name]
                )
            else:
                text = f"{self._cap(look)}, {ch.name}, enters the {loc}."
                self._add(act, text, caption, [ch.name], [ch.name])
            self.named.add(c)
        else:
            verb = self.rng.choice(["comes into", "walks into", "returns to"])
            text = f"{ch.name}, in the {ch.look.garment}, {verb} the {loc}."
            self._add(act, text, f"{self._cap(look)} {verb} the {loc}.", [ch.name], [ch.name])
        self.bound_at[c] = len(self.items) - 1
        self.present.append(c)

    def leave(self, c: int) -> None:
        name, ref = self._ref(c)
        loc = self._loc().name
        verb = self.rng.choice([f"leaves the {loc}", "walks out", "goes out"])
        self._add(
            Action("leave", actor=c, location=self.location),
            f"{name} {verb}.",
            self._cap(f"{ref} {verb}."),
            [name],
        )
        self.present.remove(c)
        self.sitting.discard(c)

    @property
    def here(self) -> list[int]:
        """Props lying in this location (props are placed per scene)."""
        return self._here

    def place_props(self, props: list[int]) -> None:
        """Lay this scene's props on the surface; a prop someone carries stays with them."""
        self._here = [p for p in props if self.holder.get(p) is None]
        for p in self._here:
            self.holder[p] = None

    def act(self, c: int) -> bool:
        """One action of a present character; False when nothing fits."""
        if c in self.fallen:
            self.fallen.discard(c)
            name, ref = self._ref(c)
            text = f"{{}} gets back to {self.cast[c].pronoun} feet."
            self._add(
                Action("getup", actor=c, location=self.location),
                text.format(name),
                self._cap(text.format(ref)),
                [name],
            )
            return True
        kind, others = self._pick_action(c)
        a = Action(kind, actor=c, location=self.location)
        if kind in ("give", "meet", "wave"):
            self._act_with(a, others)
        else:
            name, ref = self._ref(c)
            v = self._act_alone(a)
            self._add(a, f"{name} {v}.", self._cap(f"{ref} {v}."), [name])
        return True

    def _pick_action(self, c: int) -> tuple[str, list[int]]:
        """What a standing or sitting character does next, and who could be its partner."""
        if c in self.sitting:
            choices = ["stand", "stand", "wave"]
        else:
            choices = ["sit", "fall", "jump", "wave", "walk"]
            if any(self.holder.get(p) is None for p in self.here):
                choices += ["pickup", "pickup"]
            held = [p for p, h in self.holder.items() if h == c]
            if held:
                choices += ["putdown", "give", "give"]
            others = [o for o in self.present if o != c and o not in self.sitting]
            if others:
                choices += ["meet"]
        kind = str(self.rng.choice(choices))
        others = [o for o in self.present if o != c and self._fresh(o)]
        if kind in ("give", "meet", "wave") and not others:
            kind = "jump" if c not in self.sitting else "stand"
        if kind == "give" and any(o in self.sitting or o in self.fallen for o in others):
            others = [o for o in others if o not in self.sitting and o not in self.fallen]
            if not others:
                kind = "putdown"
        return kind, others

    def _act_alone(self, a: Action) -> str:
        """Carry out an action of one character; the verb phrase that says it."""
        c, loc, rng = a.actor, self._loc(), self.rng
        if a.kind == "sit":
            self.sitting.add(c)
            return f"sits down on the {loc.seat}"
        if a.kind == "stand":
            self.sitting.discard(c)
            return rng.choice(["stands up", "gets up"])
        if a.kind == "fall":
            self.fallen.add(c)
            return rng.choice(["trips and falls", "falls to the ground"])
        if a.kind == "jump":
            return rng.choice(["jumps for joy", "jumps up and down"])
        if a.kind == "walk":
            return f"walks over to the {loc.surface}"
        if a.kind == "pickup":
            a.prop = next(p for p in self.here if self.holder.get(p) is None)
            self.holder[a.prop] = c
            return f"picks up the {PROPS[a.prop].name}"
        # putdown
        a.prop = next(p for p, h in self.holder.items() if h == c)
        self.holder[a.prop] = None
        if a.prop not in self._here:
            self._here = self._here + [a.prop]
        return f"puts the {PROPS[a.prop].name} on the {loc.surface}"

    def _act_with(self, a: Action, others: list[int]) -> None:
        """give, meet or wave: with one of `others`, drawn at random."""
        rng = self.rng
        name, ref = self._ref(a.actor)
        o = others[int(rng.integers(len(others)))]
        a.other = o
        oname, oref = self._ref(o)
        if a.kind == "give":
            a.prop = next(p for p, h in self.holder.items() if h == a.actor)
            self.holder[a.prop] = o
            pn = PROPS[a.prop].name
            self._add(
                a,
                f"{name} hands {oname} the {pn}.",
                self._cap(f"{ref} hands {oref} the {pn}."),
                [name, oname],
            )
            if rng.random() < 0.5:
                self._say(str(rng.choice([f"Thank you, {name}.", "Thanks.", "For me?"])), o)
        elif a.kind == "meet":
            v = rng.choice(["and {} embrace", "shakes hands with {}"])
            self._add(
                a,
                f"{name} {v.format(oname)}.",
                self._cap(f"{ref} {v.format(oref)}."),
                [name, oname],
            )
        else:
            self._add(
                a, f"{name} waves at {oname}.", self._cap(f"{ref} waves at {oref}."), [name, oname]
            )

    def ambient(self) -> None:
        loc = self._loc()
        if loc.outdoor:
            kind, text = "rain", f"Rain begins to fall on the {loc.name}."
        else:
            kind, text = "lights", f"The lights in the {loc.name} flicker."
        self._add(Action(kind, location=self.location), text, text, [])


FILLER = (
    "What a day.",
    "Where is everyone?",
    "I can't find it anywhere.",
    "Let's wait a little.",
    "Did you hear that?",
    "It's getting late.",
    "Careful now.",
    "I knew it.",
    "Not again.",
    "Is it time already?",
)


def make_plot(
    rng: np.random.Generator,
    name: str,
    seed: int,
    n_cast: int = 3,
    scenes: int = 3,
    window: int = 8,
    dialogue_intro: float = 1.0,
) -> Film:
    """Draw one film's cast, props and events, then lay them out on a timeline.

    Scenes mostly hold two characters who take turns, so the last few descriptions often
    name the wrong person and the one that binds the right look to a name lies further back."""
    cast = _pick_cast(rng, n_cast)
    film_props = [int(p) for p in rng.choice(len(PROPS), size=min(3, len(PROPS)), replace=False)]
    plot = _Plot(rng, cast, film_props, window, dialogue_intro)
    locs = [int(x) for x in rng.choice(len(LOCATIONS), size=scenes, replace=False)]
    for s, loc in enumerate(locs):
        plot.place_props([film_props[s % len(film_props)]])
        plot.establish(loc)
        # newcomers and characters still fresh in memory first: a re-entry far from the
        # last introduction would ask for a name the context no longer holds
        order = [int(c) for c in rng.permutation(n_cast)]
        order.sort(key=lambda c: 0 if c not in plot.named or plot._fresh(c) else 1)
        k = 1 if rng.random() < 0.2 else 2
        for c in order[:k]:
            plot.enter(c)
            if rng.random() < 0.5 and plot._fresh(c):
                plot.act(c)
        if rng.random() < 0.25:
            plot.ambient()
        for _ in range(int(rng.integers(2, 5))):
            fresh = [c for c in plot.present if plot._fresh(c)]
            if not fresh:
                break
            plot.act(fresh[int(rng.integers(len(fresh)))])
        for c in list(plot.present):
            if plot._fresh(c) and c not in plot.fallen and rng.random() < 0.7:
                plot.leave(c)
    return _timeline(rng, name, seed, plot)


def _timeline(rng: np.random.Generator, name: str, seed: int, plot: _Plot) -> Film:
    """Give every item 2-4 s and put dialogue (or silence) in the gaps between them."""
    t = 1.0
    slots: list[Slot] = []
    lines: list[Line] = []
    for i, (action, text, caption, names, binds) in enumerate(plot.items):
        dur = float(np.round(rng.uniform(2.4, 3.8), 1))
        slots.append(Slot(round(t, 2), round(t + dur, 2), action, text, caption, names, binds))
        t += dur
        said = plot.lines_after.get(i)
        if said is None and rng.random() < 0.4:
            said = (str(rng.choice(FILLER)), None, [])
        if said is not None:
            gap = float(np.round(rng.uniform(2.0, 3.0), 1))
            lines.append(
                Line(round(t + 0.3, 2), round(t + gap - 0.3, 2), said[0], said[1], said[2])
            )
        else:
            gap = float(np.round(rng.uniform(0.8, 1.6), 1))
        t += gap
    return Film(
        name=name,
        seed=seed,
        cast=plot.cast,
        props=plot.props,
        slots=slots,
        lines=lines,
        duration=round(t + 0.5, 2),
    )
