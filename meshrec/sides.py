"""Which hand: the flags every tensor uses (0 right, 1 left) and the names users type.

The network reconstructs right hands and mirrors left ones (``meshrec.models.reconstructor``);
every ``side`` tensor in meshrec holds these flags.
"""

from __future__ import annotations

import torch

from meshrec.errors import MeshrecError

__all__ = ["SIDE_RIGHT", "SIDE_LEFT", "side_to_flag", "flag_to_side", "side_tensor"]

SIDE_RIGHT = 0
SIDE_LEFT = 1
_NAMES = {"right": SIDE_RIGHT, "left": SIDE_LEFT, "r": SIDE_RIGHT, "l": SIDE_LEFT}


def side_to_flag(side: str | int) -> int:
    """``'right'`` / ``'r'`` -> 0, ``'left'`` / ``'l'`` -> 1 (any case); ints 0 and 1 pass through."""
    if isinstance(side, str) and side.lower() in _NAMES:
        return _NAMES[side.lower()]
    if isinstance(side, int) and not isinstance(side, bool) and side in (SIDE_RIGHT, SIDE_LEFT):
        return side
    raise MeshrecError(f"side must be 'right' or 'left' (or 0 / 1), got {side!r}")


def flag_to_side(flag: int) -> str:
    """0 -> ``'right'``, 1 -> ``'left'``."""
    return "left" if int(flag) == SIDE_LEFT else "right"


def side_tensor(side, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B,)`` int64 flags from None (all right), one name or flag for all, or one per sample."""
    if side is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    if isinstance(side, (str, int)):
        return torch.full((batch,), side_to_flag(side), dtype=torch.long, device=device)
    values = side.tolist() if isinstance(side, torch.Tensor) else list(side)
    if len(values) != batch:
        raise MeshrecError(f"side has {len(values)} entries for {batch} images; give one per image or one name")
    return torch.tensor([side_to_flag(value) for value in values], dtype=torch.long, device=device)
