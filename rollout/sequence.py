r"""Fused replay of a recurrent core over fragment rows: :func:`unroll`.

A recurrent actor's state must be zeroed before every row with ``fin`` (a new episode starts
there). The plain way is a loop over rows with a cell (``nn.GRUCell``), which pays one call per
row and backpropagates through every one of them. :func:`unroll` runs a ``torch.nn.GRU`` or
``torch.nn.LSTM`` (any number of layers, ``batch_first=False``) over all the rows with the fewest
calls of the fused module, and gives the same outputs and final state as the loop (within float
tolerance) and the same gradients.

How (``fin`` of shape ``(n_seq, B)``):

* a ``fin`` at row 0 zeroes the initial state of that column;
* *one-row segments*, rows with ``fin`` whose next row has ``fin`` too (or that are the last row),
  start from zero and last one row: all of them, whichever row and column, go through one call
  of batch ``n`` and length 1. In sticky fragments every frozen row is one (DESIGN: the rows after
  an episode's end repeat the reset observation with ``fin``), so a sticky fragment takes two calls:
  this one, and one dense call over the rows before;
* every other row with ``fin`` (the start of a longer episode) splits the dense run: the rows
  between two such rows go through one dense call over all ``B`` columns, and the state of the
  columns with ``fin`` is zeroed between calls. Columns in a one-row segment are carried along
  in the dense calls, and what they compute there is replaced (it gets no gradient).

So the number of calls is ``1 + (rows with a fin that starts an episode of 2+ rows) + (1 if any
one-row segment)``, and a collector's step (``n_seq == 1``) is one call. Dense calls are used
rather than ``PackedSequence``: on CPU, a packed LSTM leaves oneDNN's fused kernel for a per-step
loop (about 3x slower here), and on CUDA cuDNN fuses dense calls of both cells.

Example: a recurrent actor (the actor contract, :class:`rollout.Actor`)::

    class GRUActor(rollout.Actor):
        def __init__(self, n_obs, n_act, hidden=64):
            super().__init__()
            self.embed = torch.nn.Linear(n_obs, hidden)
            self.rnn = torch.nn.GRU(hidden, hidden)
            self.logits = torch.nn.Linear(hidden, n_act)

        def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
            if hx is None:  # a fresh state, (layers, B, hidden)
                hx = torch.zeros(1, fin.shape[1], self.rnn.hidden_size)
            x = torch.tanh(self.embed(obs.float()))  # (n_seq, B, hidden)
            out, hx = rollout.unroll(self.rnn, x, hx, fin)
            logits = self.logits(out)
            act = torch.distributions.Categorical(logits=logits).sample()
            return act, hx, {"logits": logits}
"""

from typing import Tuple, Union

import torch

__all__ = ["unroll", "Hidden"]

Hidden = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]
"""A GRU's ``h`` or an LSTM's ``(h, c)``, each ``(num_layers, B, hidden_size)``."""


def unroll(rnn: torch.nn.Module, x: torch.Tensor, hx: Hidden, fin: torch.Tensor) -> Tuple[torch.Tensor, Hidden]:
    """Run ``rnn`` over the rows of ``x`` from ``hx``, zeroing the state before every row with ``fin``.

    Parameters
    ----------
    rnn : torch.nn.GRU or torch.nn.LSTM
        Time-major (``batch_first=False``), unidirectional, any number of layers; no projection
        (``proj_size=0``).
    x : Tensor ``(n_seq, B, input_size)``
        The inputs of rows ``0 .. n_seq-1`` (row ``t`` of a fragment: the features of ``z_t``).
    hx : Tensor or (Tensor, Tensor), each ``(num_layers, B, hidden_size)``
        The state before row 0 (``Fragment.hx`` when replaying a fragment); an LSTM's ``(h, c)``.
    fin : bool Tensor ``(n_seq, B)``
        ``fin[t]``: row ``t`` starts a new episode; the state is zeroed before it.

    Returns
    -------
    out : Tensor ``(n_seq, B, hidden_size)``
        The top layer's output at every row (row ``t`` computed from rows ``<= t``).
    hx : Tensor or (Tensor, Tensor), like ``hx``
        The state after row ``n_seq - 1``.

    Raises
    ------
    ValueError
        If ``rnn`` is not a unidirectional, time-major GRU or LSTM, or the shapes disagree.
    """
    lstm = _check(rnn, x, hx, fin)
    n_seq = x.shape[0]
    keep = ~fin.unsqueeze(-1)  # (n_seq, B, 1)
    state = _mask(hx, keep[0], lstm)
    if n_seq == 1:  # a collector's step: one call
        return rnn(x, state)
    # One-row segments: fin here and at the next row (or the last row).
    single = fin.clone()
    single[:-1] &= fin[1:]
    # Rows where a longer episode starts split the dense calls (row 0 is the initial state).
    starts = fin[1:] & ~single[1:]
    cuts = (torch.nonzero(starts.any(1)).flatten() + 1).tolist()
    outputs = []
    for a, b in zip([0] + cuts, cuts + [n_seq]):
        if a:
            state = _mask(state, keep[a], lstm)
        out, state = rnn(x[a:b], state)
        outputs.append(out)
    out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    if not bool(single.any()):
        return out, state
    rows, cols = torch.nonzero(single, as_tuple=True)
    zeros = x.new_zeros((rnn.num_layers, len(rows), rnn.hidden_size))
    one, last = rnn(x[rows, cols].unsqueeze(0), (zeros, zeros) if lstm else zeros)
    out = out.index_put((rows, cols), one[0])
    at_end = rows == n_seq - 1  # their state is the final state of their column
    if bool(at_end.any()):
        columns = cols[at_end]
        take = lambda s, t: s.index_copy(1, columns, t[:, at_end])  # noqa: E731
        state = (take(state[0], last[0]), take(state[1], last[1])) if lstm else take(state, last)
    return out, state


def _mask(state: Hidden, keep: torch.Tensor, lstm: bool) -> Hidden:
    """``state`` with the columns where ``keep`` ``(B, 1)`` is False zeroed."""
    if lstm:
        return state[0] * keep, state[1] * keep
    return state * keep


def _check(rnn: torch.nn.Module, x: torch.Tensor, hx: Hidden, fin: torch.Tensor) -> bool:
    """Validate the arguments of :func:`unroll`; whether ``rnn`` is an LSTM."""
    if not isinstance(rnn, (torch.nn.GRU, torch.nn.LSTM)):
        raise ValueError(f"unroll runs a torch.nn.GRU or torch.nn.LSTM, found {type(rnn).__name__}")
    if rnn.batch_first or rnn.bidirectional or getattr(rnn, "proj_size", 0):
        raise ValueError(
            f"unroll needs a time-major, unidirectional {type(rnn).__name__} without projection; found "
            f"batch_first={rnn.batch_first}, bidirectional={rnn.bidirectional}, proj_size={getattr(rnn, 'proj_size', 0)}"
        )
    lstm = isinstance(rnn, torch.nn.LSTM)
    if x.dim() != 3 or x.shape[-1] != rnn.input_size:
        raise ValueError(f"x: expected (n_seq, B, {rnn.input_size}), found {tuple(x.shape)}")
    n_seq, B = x.shape[:2]
    if tuple(fin.shape) != (n_seq, B) or fin.dtype != torch.bool:
        raise ValueError(f"fin: expected a bool tensor of shape {(n_seq, B)}, found {fin.dtype} {tuple(fin.shape)}")
    expected = (rnn.num_layers, B, rnn.hidden_size)
    states = hx if lstm and isinstance(hx, (tuple, list)) and len(hx) == 2 else (None,) if lstm else (hx,)
    for s in states:
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != expected:
            what = "(h, c), each" if lstm else "a tensor"
            found = tuple(s.shape) if isinstance(s, torch.Tensor) else type(hx).__name__
            raise ValueError(f"hx: expected {what} of shape {expected}, found {found}")
    return lstm
