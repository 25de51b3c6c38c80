"""Return and advantage estimators: pure functions over time-major tensors.

Every estimator takes the ``T`` transitions of a batch of trajectories, time-major ``(T, B, ...)``
(any trailing dimensions are allowed and treated as more batch dimensions):

==============  ==========  ==========================================================================
argument        shape       meaning for transition ``t`` (``x_t --a_t--> x_{t+1}``)
==============  ==========  ==========================================================================
``rew``         (T, B, ...)  ``r_{t+1}``, the reward of the transition
``value``       (T, B, ...)  ``V(x_t)``
``next_value``  (T, B, ...)  ``V`` of the true next state: ``V(x_{t+1})`` inside an episode, the value
                            of the final observation at a truncation, the lookahead value at the
                            fragment's end (ignored where ``terminated``)
``fin``         (T, B, ...)  bool, the episode ended in this transition: the trace is cut here
``terminated``  (T, B, ...)  bool, it ended in a terminal state: ``next_value`` is not used (0)
==============  ==========  ==========================================================================

``fin & ~terminated`` is a truncation (time limit): the trace is cut, but the target bootstraps from
``next_value`` there, which must then hold the value of the episode's true final observation (not
the next row's, which belongs to the next episode, and not zero). ``terminated`` must imply
``fin``. The trace is also cut after the last transition ``T - 1``, which bootstraps from
``next_value[T - 1]``.

:func:`from_fragment` builds all of these from a :class:`rollout.Fragment`, and :func:`valid_mask`
tells the real transitions from the frozen padding of sticky environments.
"""

from typing import Any, NamedTuple, Optional

import torch

from rollout.fragment import Fragment

__all__ = [
    "Estimate",
    "Inputs",
    "discounted_returns",
    "n_step_returns",
    "gae",
    "vtrace",
    "next_values",
    "valid_mask",
    "from_fragment",
]


class Estimate(NamedTuple):
    """An estimator's output: ``advantage`` and value ``target``, each ``(T, B, ...)``."""

    advantage: torch.Tensor
    target: torch.Tensor


class Inputs(NamedTuple):
    """Estimator inputs taken from a fragment (see :func:`from_fragment`), each ``(T, B)``.

    rew : float, ``state.rew[1:]``.
    fin : bool, ``state.fin[1:]``.
    terminated : bool, ``state.terminated[1:]``.
    value : ``V(x_t)``, or None when no values were given or recorded.
    next_value : the value of the true next state (see the module docstring), or None.
    valid : bool, real transitions (False on the frozen padding of sticky environments).
    """

    rew: torch.Tensor
    fin: torch.Tensor
    terminated: torch.Tensor
    value: Optional[torch.Tensor]
    next_value: Optional[torch.Tensor]
    valid: torch.Tensor


def _check_shapes(
    function: str, reference: torch.Tensor, *, name: str = "rew", **tensors: Optional[torch.Tensor]
) -> None:
    if not isinstance(reference, torch.Tensor) or reference.dim() < 1:
        raise ValueError(f"{function}: `{name}` must be a tensor of shape (T, B, ...), got {reference!r:.80}")
    for other, x in tensors.items():
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{function}: `{other}` must be a tensor, got {type(x).__name__}")
        if x.shape != reference.shape:
            raise ValueError(
                f"{function}: `{other}` must have the shape of `{name}` (T, B, ...) = "
                f"{tuple(reference.shape)}, got {tuple(x.shape)}"
            )


def _check_masks(function: str, fin: torch.Tensor, terminated: torch.Tensor) -> None:
    for name, x in (("fin", fin), ("terminated", terminated)):
        if x.dtype != torch.bool:
            raise ValueError(f"{function}: `{name}` must be a bool tensor, got dtype {x.dtype}")
    if bool((terminated & ~fin).any()):
        raise ValueError(f"{function}: `terminated` must imply `fin`, but it is set where `fin` is not")


def _check_unit(function: str, name: str, x: float) -> None:
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{function}: `{name}` must be in [0, 1], got {x}")


def _bootstrap(next_value: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
    # `where`, not a product: a NaN/inf in an unused slot must not leak into the result.
    return torch.where(terminated, next_value.new_zeros(()), next_value)


def _cut(fin: torch.Tensor) -> torch.Tensor:
    """Where the recursion restarts from ``next_value``: episode ends and the last transition."""
    cut = fin.clone()
    cut[-1] = True
    return cut


def discounted_returns(
    rew: torch.Tensor,
    next_value: Optional[torch.Tensor] = None,
    *,
    fin: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    r"""Discounted returns to the episode's end, bootstrapped where the data stops short of it.

    .. math:: G_t = r_{t+1} + \gamma \begin{cases} G_{t+1} & \text{inside the episode} \\
              (1 - \mathrm{terminated}_t) V_{\mathrm{next}, t} & \text{at fin or at } t = T - 1
              \end{cases}

    The Monte Carlo return of REINFORCE (Williams, 1992, "Simple statistical gradient-following
    algorithms for connectionist reinforcement learning"). It equals the target of :func:`gae`
    with ``lam=1``.

    Parameters
    ----------
    rew : Tensor, (T, B, ...)
        Rewards of the transitions.
    next_value : Tensor, (T, B, ...), optional
        Value of the true next state, used at truncations and after the last transition. None
        bootstraps from zero everywhere (pure reward sums).
    fin, terminated : Tensor, bool, (T, B, ...)
        Episode ends (cut the sum) and terminal states (do not bootstrap) as keyword arguments.
    gamma : float
        Discount in [0, 1].

    Returns
    -------
    Tensor, (T, B, ...)
        The returns ``G_t``.

    Raises
    ------
    ValueError
        On a shape or dtype mismatch, ``terminated`` without ``fin``, or ``gamma`` outside [0, 1].
    """
    _check_shapes("discounted_returns", rew, next_value=next_value, fin=fin, terminated=terminated)
    _check_masks("discounted_returns", fin, terminated)
    _check_unit("discounted_returns", "gamma", gamma)
    if next_value is None:
        next_value = torch.zeros_like(rew)
    bootstrap = _bootstrap(next_value, terminated)
    cut = _cut(fin)
    returns = []
    following = torch.zeros_like(rew[0])
    for t in reversed(range(rew.shape[0])):
        following = rew[t] + gamma * torch.where(cut[t], bootstrap[t], following)
        returns.append(following)
    return torch.stack(returns[::-1])


def n_step_returns(
    rew: torch.Tensor,
    next_value: torch.Tensor,
    *,
    fin: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    n: int,
) -> torch.Tensor:
    r"""n-step returns: ``n`` rewards, then the bootstrap value of the state reached.

    .. math:: G^{(n)}_t = \sum_{k=0}^{m-1} \gamma^k r_{t+k+1}
              + \gamma^m (1 - \mathrm{terminated}_{t+m-1}) V_{\mathrm{next}, t+m-1}

    where ``m <= n`` stops early at the episode's end (``fin``) and at the last transition (Sutton
    & Barto, 2018, "Reinforcement Learning: An Introduction", §7.1; Mnih et al., 2016,
    "Asynchronous methods for deep reinforcement learning").

    Parameters
    ----------
    rew : Tensor, (T, B, ...)
        Rewards of the transitions.
    next_value : Tensor, (T, B, ...)
        Value of the true next state of every transition.
    fin, terminated : Tensor, bool, (T, B, ...)
        Episode ends and terminal states.
    gamma : float
        Discount in [0, 1].
    n : int
        Number of rewards, at least 1 (``n >= T`` gives :func:`discounted_returns`).

    Returns
    -------
    Tensor, (T, B, ...)
        The returns ``G^{(n)}_t``.

    Raises
    ------
    ValueError
        On a shape or dtype mismatch, ``terminated`` without ``fin``, ``gamma`` outside [0, 1] or
        ``n < 1``.
    """
    _check_shapes("n_step_returns", rew, next_value=next_value, fin=fin, terminated=terminated)
    _check_masks("n_step_returns", fin, terminated)
    _check_unit("n_step_returns", "gamma", gamma)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_step_returns: `n` must be an int >= 1, got {n!r}")
    n_steps = rew.shape[0]
    bootstrap = _bootstrap(next_value, terminated)
    cut = _cut(fin)
    returns = torch.zeros_like(rew)
    active = torch.ones_like(fin)  # still summing rewards, for every start t at once
    discount = 1.0
    for k in range(min(n, n_steps)):
        # Row t of the shifted views is transition t + k; starts t >= T - k have stopped already.
        window = n_steps - k
        active_k = active[:window]
        stop = cut[k:] if k < n - 1 else torch.ones_like(cut[k:])
        gain = rew[k:] + gamma * torch.where(stop, bootstrap[k:], torch.zeros_like(rew[k:]))
        returns[:window] += torch.where(active_k, discount * gain, torch.zeros_like(gain))
        active[:window] = active_k & ~stop
        discount *= gamma
    return returns


def gae(
    rew: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    *,
    fin: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    lam: float,
) -> Estimate:
    r"""Generalized advantage estimation and the TD(lambda) value target.

    .. math:: \delta_t = r_{t+1} + \gamma (1 - \mathrm{terminated}_t) V_{\mathrm{next}, t} - V(x_t),
              \qquad A_t = \delta_t + \gamma \lambda (1 - \mathrm{fin}_t) A_{t+1}

    with ``A_T = 0``; the target is ``A_t + V(x_t)``, the lambda-return (Schulman et al., 2016,
    "High-dimensional continuous control using generalized advantage estimation"; Sutton, 1988,
    TD(lambda)). ``lam=1`` gives the discounted returns minus the baseline, ``lam=0`` the one-step
    TD error.

    Parameters
    ----------
    rew : Tensor, (T, B, ...)
        Rewards of the transitions.
    value : Tensor, (T, B, ...)
        ``V(x_t)``.
    next_value : Tensor, (T, B, ...)
        Value of the true next state of every transition.
    fin, terminated : Tensor, bool, (T, B, ...)
        Episode ends and terminal states.
    gamma, lam : float
        Discount and trace decay, each in [0, 1].

    Returns
    -------
    Estimate
        ``advantage`` and ``target``, each (T, B, ...).

    Raises
    ------
    ValueError
        On a shape or dtype mismatch, ``terminated`` without ``fin``, or ``gamma``/``lam`` outside
        [0, 1].

    Examples
    --------
    >>> from learners import returns
    >>> adv, target = returns.gae(rew, value, next_value, fin=fin, terminated=terminated,
    ...                           gamma=0.99, lam=0.95)
    """
    _check_shapes("gae", rew, value=value, next_value=next_value, fin=fin, terminated=terminated)
    _check_masks("gae", fin, terminated)
    _check_unit("gae", "gamma", gamma)
    _check_unit("gae", "lam", lam)
    delta = rew + gamma * _bootstrap(next_value, terminated) - value
    carry = (~fin).to(delta.dtype) * (gamma * lam)
    advantages = []
    following = torch.zeros_like(delta[0])
    for t in reversed(range(rew.shape[0])):
        following = delta[t] + carry[t] * following
        advantages.append(following)
    advantage = torch.stack(advantages[::-1])
    return Estimate(advantage, advantage + value)


def vtrace(
    rew: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    log_rho: torch.Tensor,
    *,
    fin: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    lam: float = 1.0,
) -> Estimate:
    r"""V-trace off-policy value targets and policy-gradient advantages (IMPALA).

    With ``rho_t = min(rho_bar, pi/mu)`` and ``c_t = lam * min(c_bar, pi/mu)``:

    .. math:: \delta_t = \rho_t (r_{t+1} + \gamma (1 - \mathrm{terminated}_t) V_{\mathrm{next}, t}
              - V(x_t)), \qquad v_t - V(x_t) = \delta_t + \gamma c_t (1 - \mathrm{fin}_t)
              (v_{t+1} - V(x_{t+1}))

    and the advantage ``rho_t (r_{t+1} + gamma v'_{t+1} - V(x_t))`` where ``v'_{t+1}`` is the
    target ``v_{t+1}`` inside an episode and the bootstrap value (zero if terminated) at episode
    ends and after the last transition (Espeholt et al., 2018, "IMPALA: Scalable distributed deep-RL
    with importance weighted actor-learner architectures", eq. 1 and §4.2). On-policy
    (``log_rho = 0``) with ``rho_bar, c_bar >= 1`` the target equals :func:`gae`'s.

    Parameters
    ----------
    rew : Tensor, (T, B, ...)
        Rewards of the transitions.
    value : Tensor, (T, B, ...)
        ``V(x_t)`` under the current critic.
    next_value : Tensor, (T, B, ...)
        Value of the true next state of every transition.
    log_rho : Tensor, (T, B, ...)
        ``log pi(a_t | x_t) - log mu(a_t | x_t)``: target over behaviour policy, treated as data.
    fin, terminated : Tensor, bool, (T, B, ...)
        Episode ends and terminal states.
    gamma : float
        Discount in [0, 1].
    rho_bar, c_bar : float
        Truncation levels of the importance weights (> 0), ``rho_bar >= c_bar`` in the paper.
    lam : float
        Extra trace decay in [0, 1] multiplying ``c_t`` (IMPALA §4.2 remark).

    Returns
    -------
    Estimate
        ``advantage`` (policy-gradient advantages) and ``target`` (``v_t``), each (T, B, ...).

    Raises
    ------
    ValueError
        On a shape or dtype mismatch, ``terminated`` without ``fin``, or an option out of range.
    """
    _check_shapes("vtrace", rew, value=value, next_value=next_value, log_rho=log_rho, fin=fin, terminated=terminated)
    _check_masks("vtrace", fin, terminated)
    _check_unit("vtrace", "gamma", gamma)
    _check_unit("vtrace", "lam", lam)
    for name, bar in (("rho_bar", rho_bar), ("c_bar", c_bar)):
        if not bar > 0:
            raise ValueError(f"vtrace: `{name}` must be > 0, got {bar}")
    rho = log_rho.exp()
    rho_clipped = rho.clamp(max=rho_bar)
    trace = torch.where(fin, 0.0, gamma * lam * rho.clamp(max=c_bar))
    bootstrap = _bootstrap(next_value, terminated)
    delta = rho_clipped * (rew + gamma * bootstrap - value)
    corrections = []
    following = torch.zeros_like(delta[0])  # v_{t+1} - V(x_{t+1})
    for t in reversed(range(rew.shape[0])):
        following = delta[t] + trace[t] * following
        corrections.append(following)
    target = value + torch.stack(corrections[::-1])
    following_target = torch.cat([target[1:], bootstrap[-1:]])
    following_target = torch.where(_cut(fin), bootstrap, following_target)
    advantage = rho_clipped * (rew + gamma * following_target - value)
    return Estimate(advantage, target)


def next_values(
    value: torch.Tensor,
    *,
    fin: torch.Tensor,
    terminated: torch.Tensor,
    truncation_value: Optional[torch.Tensor],
) -> torch.Tensor:
    """The value of the true next state of each transition, from values of all ``1+T`` rows.

    ``next_value[t]`` is ``value[t+1]`` inside an episode (for ``t = T-1`` that is the lookahead
    row), ``truncation_value[t]`` at truncations (``fin & ~terminated``), and 0 where terminated.

    Parameters
    ----------
    value : Tensor, (1+T, B, ...)
        Values of the rows ``x_0 .. x_T`` (row T is the lookahead).
    fin, terminated : Tensor, bool, (T, B, ...)
        Episode ends and terminal states of the T transitions.
    truncation_value : Tensor, (T, B, ...) or None
        Value of the true final observation, read where truncated. None is allowed only when
        there is no truncation.

    Returns
    -------
    Tensor, (T, B, ...)
        ``next_value``.

    Raises
    ------
    ValueError
        On a shape or dtype mismatch, ``terminated`` without ``fin``, or a truncation without
        ``truncation_value``.
    """
    _check_shapes("next_values", fin, name="fin", terminated=terminated, truncation_value=truncation_value)
    expected = (fin.shape[0] + 1, *fin.shape[1:])
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
        found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"next_values: `value` must have shape (1+T, B, ...) = {expected}, got {found}")
    _check_masks("next_values", fin, terminated)
    truncated = fin & ~terminated
    if truncation_value is None:
        if bool(truncated.any()):
            raise ValueError("next_values: there are truncations (fin & ~terminated) but no `truncation_value`")
        truncation_value = torch.zeros_like(value[1:])
    next_value = torch.where(truncated, truncation_value.to(value.dtype), value[1:])
    return _bootstrap(next_value, terminated)


def valid_mask(fragment: Fragment) -> torch.Tensor:
    """Which of a fragment's ``T`` transitions really happened.

    A sticky environment is frozen from its first episode end until the fragment ends: the rows
    after that end are padding (``fin`` set, ``final.episode_length == 0``). Transition ``t``
    (row ``t`` to row ``t+1``) is real iff row ``t+1`` is not padding; this also drops the
    transition out of the reset observation at the freeze, whose action was never executed.
    Row 0 is never padding: a frozen env resumes at the next fragment.

    Parameters
    ----------
    fragment : Fragment
        With ``state.fin`` and ``final.episode_length`` of shape (1+T, B).

    Returns
    -------
    Tensor, bool, (T, B)
        True for real transitions; losses give the others zero weight.
    """
    fin = fragment.state.fin[1:]
    padding = fin & (fragment.final.episode_length[1:] == 0)
    return ~padding


def _leaf(tree: Any, key: str) -> Optional[torch.Tensor]:
    if isinstance(tree, dict) and isinstance(tree.get(key), torch.Tensor):
        return tree[key]
    return None


def from_fragment(fragment: Fragment, value: Optional[torch.Tensor] = None, *, key: str = "value") -> Inputs:
    """Estimator inputs from a fragment, with the timing of DESIGN §4 applied once.

    Transition ``t`` goes from row ``t`` to row ``t+1``: its reward, ``fin`` and ``terminated`` are
    in row ``t+1``. The next-state values come from ``value[1:]`` (row T is the lookahead), and at
    truncations from ``fragment.final.actor[key]`` (the value of the true final observation that
    the collector recorded); see :func:`next_values`.

    Parameters
    ----------
    fragment : Fragment
        A fragment or a batch of fragments; ``state.rew`` is (1+T, B).
    value : Tensor, (1+T, B), optional
        Values of all rows, e.g. from the learner's module (not detached here). Default: the
        recorded ``fragment.actor[key]``; when neither exists, ``value`` and ``next_value`` are None.
    key : str
        The value's key in ``fragment.actor`` and ``fragment.final.actor``.

    Returns
    -------
    Inputs
        ``rew, fin, terminated, value, next_value, valid``, each (T, B).

    Raises
    ------
    ValueError
        When ``value`` or ``final.actor[key]`` has the wrong shape, or there are truncations but
        ``final.actor`` has no ``key``.
    """
    state = fragment.state
    rew, fin, terminated = state.rew[1:], state.fin[1:], state.terminated[1:]
    valid = valid_mask(fragment)
    if value is None:
        value = _leaf(fragment.actor, key)
    if value is None:
        return Inputs(rew, fin, terminated, None, None, valid)
    if value.shape != state.rew.shape:
        raise ValueError(
            f"from_fragment: values must have the shape of state.rew (1+T, B) = {tuple(state.rew.shape)}, "
            f"got {tuple(value.shape)}"
        )
    truncation_value = _leaf(fragment.final.actor, key)
    if truncation_value is not None:
        truncation_value = truncation_value[1:]
    truncated = fin & ~terminated
    if truncation_value is None and bool(truncated.any()):
        raise ValueError(
            f"from_fragment: the fragment has truncations but final.actor has no {key!r} to bootstrap from"
        )
    next_value = next_values(value, fin=fin, terminated=terminated, truncation_value=truncation_value)
    return Inputs(rew, fin, terminated, value[:-1], next_value, valid)
