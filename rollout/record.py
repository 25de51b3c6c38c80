"""Checking and recording the actor's outputs of one step into fragment rows.

:func:`check_outputs` validates the first step's ``(act, hx, info)`` against the action layout
and the batch size, naming the leaf, the expected and the found value. :func:`recorder` and
:func:`copier` build, once per context, the functions that check and copy every later step's
outputs: a fast path for the common layouts, and a general one that raises the real errors.
"""

from typing import Any, Callable, List

import optree
import torch

from .envs import Layout
from .errors import ActorContractError
from .nested import paths, torch_dtype

__all__ = ["check_outputs", "copier", "recorder"]


def check_outputs(out: Any, B: int, act_layout: Layout, where: str) -> None:
    """Validate ``(act, hx, info)`` from the first actor step (names the leaf, expected, actual)."""
    if not isinstance(out, tuple) or len(out) != 3:
        raise ActorContractError(f"{where} must return a tuple (act, hx, info), found {type(out).__name__}")
    act, hx, info = out
    leaves, _ = act_layout.flatten(
        act,
        lambda found: ActorContractError(
            f"{where}: the action must be nested like the action space {act_layout.space!r} with leaves {act_layout.paths}, found leaves {found}"
        ),
    )
    for path, leaf, shape, dtype in zip(act_layout.paths, leaves, act_layout.shapes, act_layout.dtypes):
        expected = (1, B, *shape)
        if not isinstance(leaf, torch.Tensor) or tuple(leaf.shape) != expected or leaf.dtype != torch_dtype(dtype):
            raise ActorContractError(
                f"{where}: action{path}: expected a tensor of shape {expected} and dtype {torch_dtype(dtype)}, found {_tensor_str(leaf)}"
            )
    if not isinstance(info, dict):
        raise ActorContractError(f"{where}: info must be a (nested) dict of tensors, found {type(info).__name__}")
    leaves, spec = optree.tree_flatten(info)
    for path, leaf in zip(paths(spec), leaves):
        if not isinstance(leaf, torch.Tensor) or leaf.dim() < 2 or tuple(leaf.shape[:2]) != (1, B):
            raise ActorContractError(
                f"{where}: info{path}: expected a tensor of shape (1, {B}, ...), found {_tensor_str(leaf)}"
            )
    leaves, spec = optree.tree_flatten(hx)
    for path, leaf in zip(paths(spec), leaves):
        if not isinstance(leaf, torch.Tensor) or leaf.dim() < 2 or leaf.shape[1] != B:
            raise ActorContractError(
                f"{where}: hx{path}: expected a tensor with batch size {B} at dim 1, found {_tensor_str(leaf)}"
            )


def _tensor_str(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r:.40}"


def _copy_rows(spec: optree.PyTreeSpec, value: Any, rows: List[torch.Tensor], what: str) -> None:
    """Copy the leaves of ``value`` into ``rows``; a changed structure or shape is an error."""
    found, found_spec = optree.tree_flatten(value)
    if found_spec != spec:
        raise ActorContractError(f"the actor's {what} changed structure: expected {spec}, found {found_spec}")
    for dst, src in zip(rows, found):
        if src.shape != dst.shape:
            raise ActorContractError(
                f"the actor's {what} changed shape: expected {tuple(dst.shape)}, found {_tensor_str(src)}"
            )
        dst.copy_(src)


def copier(spec: optree.PyTreeSpec, what: str) -> Callable[[Any, List[torch.Tensor]], None]:
    """``copy(value, rows)``: :func:`_copy_rows` with fast paths for the common layouts.

    A single tensor and a flat dict of tensors (the usual action and info) are checked and
    copied without flattening; anything else, or anything unexpected, takes the general path
    (which raises the errors).
    """
    Tensor = torch.Tensor
    if spec.is_leaf():

        def copy(value, rows):
            dst = rows[0]
            if type(value) is Tensor and value.shape == dst.shape:
                dst.copy_(value)
            else:
                _copy_rows(spec, value, rows, what)

        return copy
    if spec.kind == optree.PyTreeKind.DICT and spec.num_leaves == 0:  # an actor with no info

        def copy(value, rows):
            if type(value) is not dict or value:
                _copy_rows(spec, value, rows, what)

        return copy
    if spec.kind == optree.PyTreeKind.DICT and all(child.is_leaf() for child in spec.children()):
        keys, n = spec.entries(), spec.num_leaves

        def copy(value, rows):
            if type(value) is dict and len(value) == n:
                leaves = [value.get(key) for key in keys]
                if all(type(src) is Tensor and src.shape == dst.shape for src, dst in zip(leaves, rows)):
                    for dst, src in zip(rows, leaves):
                        dst.copy_(src)
                    return
            _copy_rows(spec, value, rows, what)

        return copy
    return lambda value, rows: _copy_rows(spec, value, rows, what)


def _same_structure(spec: optree.PyTreeSpec) -> Callable[[Any], bool]:
    """``same(hx)``: whether ``hx`` has the structure ``spec``, with the no-state and one-tensor
    cases answered without flattening."""
    if spec.num_leaves == 0 and spec.kind == optree.PyTreeKind.TUPLE:
        return lambda hx: (type(hx) is tuple and not hx) or optree.tree_structure(hx) == spec
    if spec.is_leaf():
        return lambda hx: type(hx) is torch.Tensor or optree.tree_structure(hx) == spec
    return lambda hx: optree.tree_structure(hx) == spec


def recorder(act_layout: Layout, info_spec: optree.PyTreeSpec, hx_spec: optree.PyTreeSpec) -> Callable:
    """``record(act, hx, info, act_row, actor_row)``: check the outputs of one actor step and copy
    the action into ``act_row`` and the info into ``actor_row``. For the plainest actor (one
    action tensor, no state, no info) it is one call that flattens nothing."""
    copy_act, copy_info, same_hx = (
        copier(act_layout.spec, "action"),
        copier(info_spec, "info"),
        _same_structure(hx_spec),
    )

    def record(act, hx, info, act_row, actor_row):
        copy_act(act, act_row)
        copy_info(info, actor_row)
        if not same_hx(hx):
            raise ActorContractError(
                f"the actor's hx changed structure: expected {hx_spec}, found {optree.tree_structure(hx)}"
            )

    no_info = info_spec.kind == optree.PyTreeKind.DICT and info_spec.num_leaves == 0
    no_state = hx_spec.kind == optree.PyTreeKind.TUPLE and hx_spec.num_leaves == 0
    if not (act_layout.is_leaf and no_info and no_state):
        return record
    Tensor = torch.Tensor

    def record_plain(act, hx, info, act_row, actor_row):
        dst = act_row[0]
        if (
            type(act) is Tensor
            and act.shape == dst.shape
            and type(info) is dict
            and not info
            and type(hx) is tuple
            and not hx
        ):
            dst.copy_(act)
        else:
            record(act, hx, info, act_row, actor_row)  # the checks, and their errors

    return record_plain
