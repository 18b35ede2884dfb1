"""Text about a LIBERO scene, generated from the simulator: what each object is called and where it is.

The vision-language stage (:mod:`vla_adp.train.vl_stage`) needs captions whose words are tied to
image regions, as OpenVLA's Prismatic stage has from its VLM pre-training. Here they come from the
simulator, never from pixels a model produced:

    geom-id segmentation of the scene camera ─► per object: pixel count, centroid, mean colour
    BDDL goals of the suite's tasks ─► the instruction's own phrase for each object
                                       ("the alphabet soup", "the black bowl between the plate ...")

and become (prompt, answer) pairs of five forms (:func:`scene_text`):

* ``instruction``: the suite instruction that names an object in this scene, in the policy's own
  prompt → where that object is ("pick up the alphabet soup and place it in the basket" →
  "front left, row 5 column 2"). The answer can only be found by grounding the instruction's
  words to the object's patches;
* ``where``: "where is the ketchup" → the same location words;
* ``what``: "what is at row 5 column 2" → the name (only where one named object has its centre there);
* ``colour``: "what colour is the butter" → the nearest of a few colour names to its mean pixel;
* ``relation``: "where is the milk from the basket" → left of / right of / behind / in front of.

Image coordinates are those of the upright scene camera the policy sees (rotated 180° as the
evaluation does); rows run from the back of the table (top) to the front; ``row r column c`` is the
cell of the policy's patch grid (8 × 8 for patch 16 on 128 px). Names follow the instructions: an
object is named when its phrase is unique in the scene (the two black bowls of LIBERO-Spatial are
named only by the task's relational phrase, and only the one the task's goal picks).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

FORMS = ("instruction", "where", "what", "colour", "relation")
ROWS, COLS = ("back", "middle", "front"), ("left", "center", "right")
# A few colour names and an sRGB anchor each (mean pixel of an object -> nearest anchor).
COLOURS = {"black": (30, 30, 30), "white": (225, 225, 225), "grey": (128, 128, 128), "red": (190, 40, 40),
           "orange": (225, 130, 40), "yellow": (225, 200, 50), "green": (60, 150, 60), "blue": (50, 80, 180),
           "brown": (120, 80, 45)}
# Categories no instruction names as a grasp target, with the words the instructions use for them.
FIXED_NAMES = {"basket": "the basket", "plate": "the plate", "glazed_rim_porcelain_ramekin": "the ramekin",
               "cookies": "the cookie box", "wooden_cabinet": "the wooden cabinet", "flat_stove": "the stove",
               "akita_black_bowl": "the black bowl"}
PICK = re.compile(r"^pick up (the .+?) and place it (?:in|on) ")
MIN_PIXELS = 6  # an object with fewer visible pixels at 128 px is not talked about


@dataclass(frozen=True)
class ObjectFact:
    """One object as the scene camera shows it.

    Args:
        key: the simulator's name (``alphabet_soup_1``).
        name: the instruction-style phrase (``the alphabet soup``), or ``""`` where it is ambiguous.
        pixels: visible pixels in the upright scene image.
        row / col: centroid of those pixels as a fraction of the image side (0 = top / left).
        colour: nearest colour name of the mean pixel.
        instruction: the suite instruction whose goal picks this object, or ``""``.
    """

    key: str
    name: str
    pixels: int
    row: float
    col: float
    colour: str
    instruction: str = ""


def category(key: str) -> str:
    """``alphabet_soup_1`` -> ``alphabet_soup``."""
    return re.sub(r"_\d+$", "", key)


def instruction_phrase(instruction: str) -> str | None:
    """The noun phrase a pick-and-place instruction names its object with (None: another form)."""
    m = PICK.match(instruction.lower())
    return m.group(1) if m else None


def colour_name(rgb) -> str:
    rgb = np.asarray(rgb, float)
    return min(COLOURS, key=lambda c: float(((np.asarray(COLOURS[c], float) - rgb) ** 2).sum()))


def region(row: float, col: float) -> str:
    """Coarse words for a point of the image: ``front left``, ``back center``, ``center``."""
    r, c = ROWS[min(2, int(row * 3))], COLS[min(2, int(col * 3))]
    return "center" if (r, c) == ("middle", "center") else f"{r} {c}"


def cell(row: float, col: float, grid: int) -> tuple[int, int]:
    return min(grid - 1, int(row * grid)), min(grid - 1, int(col * grid))


def location(fact: ObjectFact, grid: int) -> str:
    r, c = cell(fact.row, fact.col, grid)
    return f"{region(fact.row, fact.col)}, row {r} column {c}"


def relation(a: ObjectFact, b: ObjectFact) -> str:
    """Where ``a`` is seen from ``b`` in the image, along the axis where they differ most."""
    dr, dc = a.row - b.row, a.col - b.col
    if abs(dc) >= abs(dr):
        return "left of" if dc < 0 else "right of"
    return "behind" if dr < 0 else "in front of"


def object_facts(masks: dict[str, np.ndarray], image: np.ndarray, names: dict[str, str],
                 instructions: dict[str, str]) -> list[ObjectFact]:
    """Facts of every object with at least ``MIN_PIXELS`` visible pixels.

    Args:
        masks: simulator name -> (H, W) bool mask in the upright scene image.
        image: (H, W, 3) the upright scene image (the colours).
        names: simulator name -> phrase (from :func:`scene_names`).
        instructions: simulator name -> the suite instruction that picks it.
    """
    facts = []
    for key, mask in masks.items():
        n = int(mask.sum())
        if n < MIN_PIXELS:
            continue
        rows, cols = np.nonzero(mask)
        h, w = mask.shape
        facts.append(ObjectFact(key, names.get(key, ""), n, float(rows.mean() + 0.5) / h, float(cols.mean() + 0.5) / w,
                                colour_name(image[mask].mean(0)), instructions.get(key, "")))
    return facts


def scene_names(keys: list[str], goals: list[tuple[str, str]], own_goal: str, own_instruction: str
                ) -> tuple[dict[str, str], dict[str, str]]:
    """Phrases and instructions for the objects ``keys`` of one scene.

    Args:
        keys: the scene's simulator names (movable objects and fixtures).
        goals: (goal object's simulator name, instruction) of every task of the suite.
        own_goal / own_instruction: this scene's task.

    Returns:
        (names, instructions): simulator name -> phrase, for phrases unique in the scene; simulator
        name -> the instruction that picks it (this task's goal object always; another task's when
        its goal category occurs once here).
    """
    by_category = {category(g): instruction_phrase(i) for g, i in goals if instruction_phrase(i)}
    phrase = {k: by_category.get(category(k)) or FIXED_NAMES.get(category(k), "the " + category(k).replace("_", " "))
              for k in keys}
    counts: dict[str, int] = {}
    for p in phrase.values():
        counts[p] = counts.get(p, 0) + 1
    names = {k: p for k, p in phrase.items() if counts[p] == 1}
    per_category = {c: [k for k in keys if category(k) == c] for c in {category(k) for k in keys}}
    instructions = {}
    for g, ins in goals:
        same = per_category.get(category(g), [])
        if len(same) == 1:
            instructions[same[0]] = ins
    own_phrase = instruction_phrase(own_instruction)
    if own_goal in keys:
        instructions[own_goal] = own_instruction
        if own_phrase:
            names[own_goal] = own_phrase
    return names, instructions


def scene_text(facts: list[ObjectFact], grid: int) -> list[tuple[str, str, str]]:
    """(form, prompt text, answer) pairs of one frame, in a fixed order (deterministic).

    ``instruction`` prompts are suite instructions (for the policy's prompt template); the others
    are questions (for :data:`vla_adp.train.vl_stage.QUESTION_TEMPLATE`)."""
    named = [f for f in facts if f.name]
    out = [("instruction", f.instruction, location(f, grid)) for f in facts if f.instruction]
    out += [("where", f"where is {f.name}", location(f, grid)) for f in named]
    cells: dict[tuple[int, int], list[ObjectFact]] = {}
    for f in named:
        cells.setdefault(cell(f.row, f.col, grid), []).append(f)
    out += [("what", f"what is at row {r} column {c}", fs[0].name) for (r, c), fs in sorted(cells.items())
            if len(fs) == 1]
    out += [("colour", f"what colour is {f.name}", f.colour) for f in named]
    out += [("relation", f"where is {a.name} from {b.name}", relation(a, b)) for a in named for b in named
            if a is not b and max(abs(a.row - b.row), abs(a.col - b.col)) > 0.05]
    return out


def facts_json(facts: list[ObjectFact]) -> list[dict]:
    return [asdict(f) for f in facts]
