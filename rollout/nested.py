"""Nested-structure helpers on top of :mod:`optree`.

Observations, actions, actor infos and recurrent states may be any nesting of dict, list, tuple
and namedtuple. The structure is flattened once at set-up; the per-step loop then works on flat
lists of leaves and compares tree specs (a cheap C++ comparison) to catch structure changes.
"""

from typing import Any, List, Tuple

import numpy as np
import optree
import torch

__all__ = ["paths", "path_str", "leaf_spaces", "map_space", "torch_dtype"]


def paths(spec: optree.PyTreeSpec) -> List[str]:
    """Readable paths of the leaves of ``spec``, e.g. ``["['pos'][0]", "['vel']"]``."""
    return [path_str(p) for p in spec.paths()]


def path_str(path: Tuple[Any, ...]) -> str:
    return "".join(f"[{k!r}]" for k in path)


def _is_space_node(space: Any) -> bool:
    # Duck-typed so that gymnasium's and legacy gym's Dict/Tuple spaces both work.
    name = type(space).__name__
    return name in ("Dict", "Tuple") and hasattr(space, "spaces")


def map_space(space: Any) -> Any:
    """A gymnasium (or gym) space as a nested python structure of leaf spaces.

    ``Dict`` becomes a dict (keys sorted, as gymnasium and optree both order them), ``Tuple`` a
    tuple; every other space is a leaf, which must have ``shape`` and ``dtype``.
    """
    if _is_space_node(space):
        if isinstance(space.spaces, dict):
            return {key: map_space(sub) for key, sub in space.spaces.items()}
        return tuple(map_space(sub) for sub in space.spaces)
    return space


def leaf_spaces(space: Any) -> Tuple[List[Any], optree.PyTreeSpec]:
    """Flat leaf spaces and the tree spec of ``space`` (see :func:`map_space`)."""
    return optree.tree_flatten(map_space(space), is_leaf=lambda s: not isinstance(s, (dict, tuple, list)))


def torch_dtype(dtype: Any) -> torch.dtype:
    """The torch dtype of a numpy dtype (``np.dtype('float32')`` -> ``torch.float32``)."""
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
