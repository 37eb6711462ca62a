"""The kernel generations, oldest first: each is registered as its own candidate `nvrtc.<name>`."""

from __future__ import annotations

from . import sm80, sm90a
from .generation import Generation

GENERATIONS: tuple[Generation, ...] = (sm80.GENERATION, sm90a.GENERATION)


def named(name: str) -> Generation:
    """The generation of GENERATIONS called `name`."""
    for generation in GENERATIONS:
        if generation.name == name:
            return generation
    raise KeyError(f"no kernel generation {name!r} in GENERATIONS ({', '.join(g.name for g in GENERATIONS)}); "
                   f"pass generation= for one registered elsewhere")
