"""All-or-nothing state_dict loading for the modules' buffers."""
from __future__ import annotations

from torch import Tensor


def check_state_shapes(state_dict: dict, prefix: str, shapes: dict[str, tuple]) -> None:
    """Refuse a state_dict whose entries (those present) do not have the module's shapes.

    Called from ``_load_from_state_dict`` before anything is copied: torch's own check copies
    the entries that match and raises after, leaving the module half loaded. The error is
    torch's (a RuntimeError naming the key), raised before the first write. A shape entry of
    None in ``shapes`` matches any size along that dimension (a lazy module's d).
    """
    for key, shape in shapes.items():
        t = state_dict.get(prefix + key)
        if not isinstance(t, Tensor):
            continue
        if t.dim() != len(shape) or any(w is not None and g != w for g, w in zip(t.shape, shape)):
            want = "(" + ", ".join("d" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
            raise RuntimeError(
                f"size mismatch for {prefix + key}: the module's {key} has shape {want}, the "
                f"state_dict's {tuple(t.shape)}; nothing was loaded"
            )
