r"""Proximal policy optimisation: preparation, minibatches and the clipped-surrogate loss.

With the ratio ``r_t = pi(a_t|x_t) / mu(a_t|x_t)`` of the current policy over the behaviour policy
and advantages ``A_t`` normalised per minibatch (Schulman et al., 2017, "Proximal policy
optimization algorithms", eq. 7 and 9):

.. math:: L = \frac{1}{N} \sum_t \max(-A_t r_t, -A_t \,\mathrm{clip}(r_t, 1-\epsilon, 1+\epsilon))
          + c_v \frac{1}{N} \sum_t \tfrac12 (V(x_t) - \hat V_t)^2 - c_H \frac{1}{N} \sum_t H_t

summed over the valid transitions (:func:`learners.returns.valid_mask`). With ``value_clip`` the
value term is ``max((V - \hat V)^2, (V_old + clip(V - V_old, -c, c) - \hat V)^2)`` (off by default:
it does not help in general; Andrychowicz et al., 2021, "What matters in on-policy RL?").

A training step::

    prepared = ppo.prepare(batch, actor, gamma=0.99, lam=0.95)      # no grad
    for epoch in range(4):
        for minibatch in ppo.minibatches(prepared, 4, generator=g):  # every sample once per epoch
            loss, info = ppo.loss(minibatch, actor, clip=0.2)
            optim.zero_grad(); loss.backward(); optim.step()

``ppo.loss(batch, actor, ...)`` also accepts a fragment directly (prepare + one minibatch).
"""

from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple, Union

import optree
import torch

from rollout.fragment import Fragment, State

from . import _policy
from .returns import from_fragment, gae

__all__ = ["Prepared", "prepare", "minibatches", "loss"]


class Prepared(NamedTuple):
    """A batch ready for PPO epochs, time-major ``(n_seq, n, ...)``.

    After :func:`prepare` ``(n_seq, n) = (T, B)``; a sequence minibatch keeps whole columns
    ``(T, n)``, a flat one holds single rows ``(1, n)``.

    state : State, the rows ``0..T-1`` fed to ``module.step`` (inputs, not the targets).
    hx : the recurrent state before row 0 of each column (batch at dim 1); ``()`` for flat rows.
    action : the action taken at each row, ``state.act[t+1]`` of the fragment.
    logp : behaviour log-probability of ``action``.
    value : ``V(x_t)`` at preparation (for value clipping and diagnostics).
    advantage, target : GAE advantages and lambda-returns.
    valid : bool, the transition is real (zero weight otherwise).
    """

    state: State
    hx: Any
    action: Any
    logp: torch.Tensor
    value: torch.Tensor
    advantage: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor


@torch.no_grad()
def prepare(batch: Fragment, module: torch.nn.Module, *, gamma: float = 0.99, lam: float = 0.95) -> Prepared:
    """Advantages, value targets and behaviour log-probabilities of a batch, without gradients.

    The values (of every row, including the lookahead row T used to bootstrap the fragment's end)
    come from the module as it is now; truncations bootstrap from the recorded
    ``batch.final.actor['value']``. The behaviour log-probabilities are the recorded
    ``batch.actor['logp']`` when present, else the module's distribution of the recorded info, so
    the ratio stays correct for data collected by a lagged actor.

    Parameters
    ----------
    batch : Fragment
        Leaves ``(1+T, B, ...)``; never modified (the result holds views of it).
    module : Actor
        Evaluated with one virtual step over all ``1+T`` rows from ``batch.hx``; needs
        ``info['value']`` and a policy (``distribution(info)`` or ``info['logits']``).
    gamma, lam : float
        Discount and GAE trace decay in [0, 1].

    Returns
    -------
    Prepared
        Leaves ``(T, B, ...)``, ``hx = batch.hx``.

    Raises
    ------
    rollout.errors.ActorContractError
        A ``TypeError``: the module's ``info`` is not a dict, has no tensor ``info['value']``, or
        has one whose shape is not ``(1+T, B)``.
    ValueError
        On ``gamma`` or ``lam`` outside [0, 1]; a recorded ``batch.actor['logp']`` that is not
        (1+T, B); without one, a module with no policy (neither ``distribution(info)`` nor
        ``info['logits']``) or whose ``log_prob(a)`` is not (T, B); a ``batch.final.actor['value']``
        that is missing although the batch has truncations, or has the wrong shape.
    """
    state = batch.state
    shape = state.rew[1:].shape
    info = _policy.evaluate(module, state, batch.hx)
    value = _policy.value_of(info, state.rew.shape, "ppo.prepare")
    action = _policy.rows(state.act, slice(1, None))
    logp = _policy.behaviour_logp(module, batch.actor, action, shape)
    inputs = from_fragment(batch, value)
    advantage, target = gae(
        inputs.rew, inputs.value, inputs.next_value, fin=inputs.fin, terminated=inputs.terminated, gamma=gamma, lam=lam
    )
    return Prepared(
        state=_policy.rows(state, slice(None, -1)),
        hx=batch.hx,
        action=action,
        logp=logp,
        value=inputs.value,
        advantage=advantage,
        target=target,
        valid=inputs.valid,
    )


def _is_recurrent(hx: Any) -> bool:
    return len(optree.tree_leaves(hx)) > 0


def minibatches(
    prepared: Prepared,
    n_minibatches: int,
    *,
    generator: Optional[torch.Generator] = None,
    sequences: Optional[bool] = None,
) -> Iterator[Prepared]:
    """One epoch of shuffled minibatches: every sample of ``prepared`` in exactly one of them.

    Flat minibatches split the ``T * B`` rows (for feed-forward modules; each row becomes a
    sequence of length 1 with ``hx = ()``). Sequence minibatches split the ``B`` columns and keep
    each column's ``T`` rows in order with its slice of ``prepared.hx``, so a recurrent module
    replays them exactly as collected. Sizes differ by at most one. Invalid (padding) rows are
    kept, with ``valid`` False, so the loss gives them no weight.

    Parameters
    ----------
    prepared : Prepared
        From :func:`prepare`, leaves ``(T, B, ...)``.
    n_minibatches : int
        Number of minibatches, between 1 and the number of samples (rows or columns).
    generator : torch.Generator, optional
        Source of the shuffle (the global generator if None).
    sequences : bool, optional
        Sequence minibatches; by default exactly when ``prepared.hx`` has tensors (recurrent).

    Yields
    ------
    Prepared
        Leaves ``(1, n, ...)`` (flat) or ``(T, n, ...)`` (sequences).

    Raises
    ------
    ValueError
        When ``n_minibatches`` is out of range, or flat minibatches are asked of a recurrent batch.
    """
    recurrent = _is_recurrent(prepared.hx)
    if sequences is None:
        sequences = recurrent
    if recurrent and not sequences:
        raise ValueError("ppo.minibatches: flat minibatches lose the recurrent state; use sequences=True")
    n_steps, n_envs = prepared.valid.shape
    n_samples = n_envs if sequences else n_steps * n_envs
    if not isinstance(n_minibatches, int) or not 1 <= n_minibatches <= n_samples:
        unit = "columns" if sequences else "rows"
        raise ValueError(
            f"ppo.minibatches: `n_minibatches` must be an int in [1, {n_samples}] ({unit}), got {n_minibatches!r}"
        )
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(n_samples, generator=generator, device=device).to(prepared.valid.device)
    fields = prepared._replace(hx=())
    for index in torch.tensor_split(order, n_minibatches):
        if sequences:
            columns = optree.tree_map(lambda x: x[:, index], fields)
            yield columns._replace(hx=optree.tree_map(lambda h: h.index_select(1, index), prepared.hx))
        else:
            step, env = index // n_envs, index % n_envs
            yield optree.tree_map(lambda x: x[step, env].unsqueeze(0), fields)


def loss(
    batch: Union[Prepared, Fragment],
    module: torch.nn.Module,
    *,
    clip: float = 0.2,
    value_clip: Optional[float] = None,
    value_coef: float = 0.5,
    entropy_coef: float = 0.0,
    normalize_advantages: bool = True,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The PPO clipped-surrogate loss of a minibatch (see the module docstring for the formula).

    Parameters
    ----------
    batch : Prepared or Fragment
        A minibatch from :func:`minibatches` (or all of :func:`prepare`'s output), or a fragment,
        which is prepared first with ``gamma`` and ``lam`` and used whole. Never modified.
    module : Actor
        Evaluated with one virtual step over the minibatch's rows from its ``hx``; needs
        ``info['value']`` and a policy (``distribution(info)`` or ``info['logits']``).
    clip : float
        The ratio's clip range ``epsilon`` (> 0).
    value_clip : float, optional
        Clip range of the value change from the prepared value; None (default) disables it. The
        error is the larger of the clipped and unclipped ones (as CleanRL; SB3's ``clip_range_vf``
        uses the clipped one alone).
    value_coef, entropy_coef : float
        Weights ``c_v`` and ``c_H`` (>= 0).
        The value term is halved, ``0.5 * mean((V - target)^2)``, so ``value_coef`` is twice SB3's
        ``vf_coef`` (which weights the unhalved ``F.mse_loss``): SB3's ``vf_coef=0.5`` is
        ``value_coef=1.0``. CleanRL halves its value loss too: its ``vf_coef`` is our ``value_coef``.
    normalize_advantages : bool
        Standardise the advantages over the minibatch's valid samples (population std, + 1e-8).
        Skipped when the minibatch has at most one valid sample, whose standardised advantage
        would be 0 and give no policy gradient (as SB3's ``len(advantages) > 1``); with valid
        samples that share one advantage value the result is 0 all the same.
    gamma, lam : float
        Used only when ``batch`` is a fragment.

    Returns
    -------
    loss : Tensor, ()
        The scalar to minimise.
    info : dict of float
        ``loss``, ``policy_loss``, ``value_loss`` (halved, before ``value_coef``), ``entropy``,
        ``approx_kl`` (the estimator ``E[(r - 1) - log r]`` of KL(mu || pi)), ``clipfrac`` (fraction
        with ``|r - 1| > clip``), ``ratio_mean``, ``explained_variance`` (of the targets by the
        current values).

    Raises
    ------
    rollout.errors.ActorContractError
        A ``TypeError``: the module's ``info`` is not a dict, has no tensor ``info['value']``, or
        has one whose shape is not the minibatch's ``(n_seq, n)`` (with a fragment: as in
        :func:`prepare`).
    ValueError
        On ``clip``, or a given ``value_clip``, not > 0; a negative ``value_coef`` or
        ``entropy_coef``; a ``batch`` that is neither :class:`Prepared` nor a fragment; a module
        with no policy (neither ``distribution(info)`` nor ``info['logits']``) or whose
        ``log_prob(a)`` does not have the minibatch's shape; with a fragment, any ``ValueError`` of
        :func:`prepare`.

    Examples
    --------
    >>> loss, info = ppo.loss(batch, actor, gamma=0.99, lam=0.95, clip=0.2)
    """
    _policy.check_coefficient("ppo.loss", "clip", clip, positive=True)
    _policy.check_coefficient("ppo.loss", "value_clip", value_clip, positive=True)
    _policy.check_coefficient("ppo.loss", "value_coef", value_coef)
    _policy.check_coefficient("ppo.loss", "entropy_coef", entropy_coef)
    if isinstance(batch, Fragment):
        batch = prepare(batch, module, gamma=gamma, lam=lam)
    elif not isinstance(batch, Prepared):
        raise ValueError(f"ppo.loss: `batch` must be a Prepared minibatch or a Fragment, got {type(batch).__name__}")
    shape = batch.valid.shape
    weight = batch.valid
    info = _policy.evaluate(module, batch.state, batch.hx)
    value = _policy.value_of(info, shape, "ppo.loss")
    logp, entropy = _policy.log_prob_entropy(_policy.distribution(module, info), batch.action, shape)

    advantage = batch.advantage
    if normalize_advantages:
        mean = _policy.masked_mean(advantage, weight)
        std = _policy.masked_mean((advantage - mean) ** 2, weight).sqrt()
        # A lone valid sample would standardise to 0 (no policy gradient): keep it as it is.
        # torch.where rather than a Python `if`: no device-to-host sync.
        advantage = torch.where(weight.sum() > 1, (advantage - mean) / (std + 1e-8), advantage)
    log_ratio = logp - batch.logp
    ratio = log_ratio.exp()
    surrogate = torch.max(-advantage * ratio, -advantage * ratio.clamp(1.0 - clip, 1.0 + clip))
    policy_loss = _policy.masked_mean(surrogate, weight)

    error = (value - batch.target) ** 2
    if value_clip is not None:
        clipped = batch.value + (value - batch.value).clamp(-value_clip, value_clip)
        error = torch.max(error, (clipped - batch.target) ** 2)
    value_loss = 0.5 * _policy.masked_mean(error, weight)
    mean_entropy = _policy.masked_mean(entropy, weight)
    total = policy_loss + value_coef * value_loss - entropy_coef * mean_entropy

    with torch.no_grad():
        approx_kl = _policy.masked_mean((ratio - 1.0) - log_ratio, weight)
        clipfrac = _policy.masked_mean(((ratio - 1.0).abs() > clip).float(), weight)
        ratio_mean = _policy.masked_mean(ratio, weight)
    return total, _policy.scalars(
        loss=total,
        policy_loss=policy_loss,
        value_loss=value_loss,
        entropy=mean_entropy,
        approx_kl=approx_kl,
        clipfrac=clipfrac,
        ratio_mean=ratio_mean,
        explained_variance=_policy.explained_variance(value, batch.target, weight),
    )
