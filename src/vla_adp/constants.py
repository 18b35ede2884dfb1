"""Platform constants and token ids of OpenVLA-OFT (docs/reference.md §2; moojink/openvla-oft ``prismatic/vla/constants.py``).

The reference picks the platform row by substring-matching the whole command line
(`prismatic/vla/constants.py`); here a platform is an explicit, named value.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100
BOS_ID = 1
STOP_ID = 2  # Llama `</s>`: appended after the action slots and attended to.
SPACE_PIECE = "\u2581"  # SentencePiece '▁' (id 29871 in Llama-2): the "Out: " space before actions.
LLAMA_SPACE_ID = 29871


@dataclass(frozen=True)
class Platform:
    """Shapes and normalisation of one robot platform.

    Args:
        name: registry name.
        chunk: actions per query (NUM_ACTIONS_CHUNK).
        action_dim: dimensions per action (ACTION_DIM).
        proprio_dim: proprioceptive state size (PROPRIO_DIM).
        normalization: ``"bounds_q99"`` (q01/q99) or ``"bounds"`` (min/max).
        eef_pos: slice ``(start, stop)`` of the raw state holding the end-effector position,
            used by the action-aware gate; ``None`` where the state has none (ALOHA joints).
        eef_rot: slice of the raw state holding the end-effector orientation as an axis-angle
            vector (LIBERO: state[3:6]); ``None`` where the state has none.
    """

    name: str
    chunk: int
    action_dim: int
    proprio_dim: int
    normalization: str = "bounds_q99"
    eef_pos: tuple[int, int] | None = (0, 3)
    eef_rot: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for field in ("chunk", "action_dim", "proprio_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Platform.{field} must be a positive int, got {value!r}")
        if self.normalization not in ("bounds_q99", "bounds"):
            raise ValueError(
                f"Platform.normalization must be 'bounds_q99' or 'bounds', got {self.normalization!r}"
            )

    @property
    def n_action_slots(self) -> int:
        return self.chunk * self.action_dim


PLATFORMS: dict[str, Platform] = {
    "libero": Platform("libero", chunk=8, action_dim=7, proprio_dim=8, eef_rot=(3, 6)),
    "aloha": Platform("aloha", chunk=25, action_dim=14, proprio_dim=14, normalization="bounds", eef_pos=None),
    "bridge": Platform("bridge", chunk=5, action_dim=7, proprio_dim=7, eef_rot=None),
    # Our Meta-World reference policy: 4-D actions (xyz delta + gripper), hand xyz + gripper state.
    "metaworld": Platform("metaworld", chunk=8, action_dim=4, proprio_dim=4),
}


def get_platform(name: str | Platform) -> Platform:
    """Look a platform up by name (or pass one through)."""
    if isinstance(name, Platform):
        return name
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ValueError(f"unknown platform {name!r}; expected one of {sorted(PLATFORMS)}") from None
