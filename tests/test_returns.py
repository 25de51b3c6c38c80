"""learners.returns: every estimator against a naive loop, the hand example, fragment inputs."""

import math

import pytest
import torch

from learners import returns
from rollout.fragment import Final, Fragment, State
from tests.learners_fixtures import MLPActor, ToyCollector

GAMMAS = [0.0, 0.5, 0.9, 1.0]
LAMBDAS = [0.0, 0.5, 0.95, 1.0]
SHAPES = [(7, 1), (9, 4), (6, 3, 2)]


def make_data(shape, seed, p_end=0.5):
    """Consistent random estimator inputs: next_value[t] = value[t+1] inside episodes."""
    g = torch.Generator().manual_seed(seed)
    t = shape[0]
    rew = torch.randn(shape, generator=g, dtype=torch.float64)
    values = torch.randn((t + 1, *shape[1:]), generator=g, dtype=torch.float64)
    fin = torch.rand(shape, generator=g) < p_end
    terminated = fin & (torch.rand(shape, generator=g) < 0.5)
    truncation_value = torch.randn(shape, generator=g, dtype=torch.float64)
    log_rho = 0.7 * torch.randn(shape, generator=g, dtype=torch.float64)
    # The naive construction of the next-state values, element by element.
    next_value = torch.empty(shape, dtype=torch.float64)
    for index in torch.cartesian_prod(*[torch.arange(n) for n in shape]).reshape(-1, len(shape)).tolist():
        i = tuple(index)
        later = (i[0] + 1, *i[1:])
        if terminated[i]:
            next_value[i] = 0.0
        elif fin[i]:
            next_value[i] = truncation_value[i]
        else:
            next_value[i] = values[later]
    return dict(
        rew=rew,
        values=values,
        value=values[:-1],
        next_value=next_value,
        fin=fin,
        terminated=terminated,
        truncation_value=truncation_value,
        log_rho=log_rho,
    )


def columns(*tensors):
    """(T, ...) tensors as lists of per-column python lists, trailing dims flattened."""
    return [x.reshape(x.shape[0], -1).T.tolist() for x in tensors]


def unflatten(cols, shape):
    return torch.tensor(cols, dtype=torch.float64).T.reshape(shape)


def end_of(t, fin, n_steps):
    """The last transition of the stretch starting at t: the episode end or the fragment end."""
    k = t
    while not fin[k] and k < n_steps - 1:
        k += 1
    return k


def naive_discounted(rew, next_value, fin, terminated, gamma, n=math.inf):
    out = []
    for r, v, f, d in zip(*columns(rew, next_value, fin, terminated)):
        n_steps = len(r)
        col = []
        for t in range(n_steps):
            total, discount, k = 0.0, 1.0, t
            while True:
                total += discount * r[k]
                if f[k] or k == n_steps - 1 or k - t + 1 == n:
                    if not d[k]:
                        total += discount * gamma * v[k]
                    break
                discount *= gamma
                k += 1
            col.append(total)
        out.append(col)
    return unflatten(out, rew.shape)


def naive_gae(rew, value, next_value, fin, terminated, gamma, lam):
    out = []
    for r, v, nv, f, d in zip(*columns(rew, value, next_value, fin, terminated)):
        n_steps = len(r)
        delta = [r[t] + gamma * (0.0 if d[t] else nv[t]) - v[t] for t in range(n_steps)]
        out.append(
            [
                sum((gamma * lam) ** (k - t) * delta[k] for k in range(t, end_of(t, f, n_steps) + 1))
                for t in range(n_steps)
            ]
        )
    return unflatten(out, rew.shape)


def naive_lambda_return(rew, next_value, fin, terminated, gamma, lam):
    """G_t = r + gamma * ((1 - lam) V(x_{t+1}) + lam G_{t+1}), restarting from V at cuts."""
    out = []
    for r, nv, f, d in zip(*columns(rew, next_value, fin, terminated)):
        n_steps = len(r)
        col = [0.0] * n_steps
        for t in reversed(range(n_steps)):
            boot = 0.0 if d[t] else nv[t]
            if f[t] or t == n_steps - 1:
                col[t] = r[t] + gamma * boot
            else:
                col[t] = r[t] + gamma * ((1 - lam) * boot + lam * col[t + 1])
        out.append(col)
    return unflatten(out, rew.shape)


def naive_vtrace(rew, value, next_value, log_rho, fin, terminated, gamma, rho_bar, c_bar, lam):
    """IMPALA eq. 1 as a sum, and the policy-gradient advantage."""
    targets, advantages = [], []
    for r, v, nv, lr, f, d in zip(*columns(rew, value, next_value, log_rho, fin, terminated)):
        n_steps = len(r)
        ratio = [math.exp(x) for x in lr]
        rho = [min(rho_bar, x) for x in ratio]
        c = [lam * min(c_bar, x) for x in ratio]
        boot = [0.0 if d[t] else nv[t] for t in range(n_steps)]
        delta = [rho[t] * (r[t] + gamma * boot[t] - v[t]) for t in range(n_steps)]
        target = []
        for s in range(n_steps):
            total = v[s]
            for t in range(s, end_of(s, f, n_steps) + 1):
                total += gamma ** (t - s) * math.prod(c[s:t]) * delta[t]
            target.append(total)
        advantage = []
        for s in range(n_steps):
            following = boot[s] if f[s] or s == n_steps - 1 else target[s + 1]
            advantage.append(rho[s] * (r[s] + gamma * following - v[s]))
        targets.append(target)
        advantages.append(advantage)
    return unflatten(advantages, rew.shape), unflatten(targets, rew.shape)


# ---------------------------------------------------------------------------------------------------
# the hand example of issue 4


HAND = dict(
    rew=torch.tensor([1.0, 1.0, 1.0, 1.0]),
    value=torch.tensor([0.5, 1.0, 2.0, 1.5]),
    next_value=torch.tensor([1.0, 3.0, 1.5, 4.0]),  # 3.0 is the value of the final observation
    terminated=torch.tensor([False, False, False, True]),
    truncated=torch.tensor([False, True, False, False]),
)


def test_gae_hand_example():
    fin = HAND["terminated"] | HAND["truncated"]
    adv, target = returns.gae(
        HAND["rew"],
        HAND["value"],
        HAND["next_value"],
        fin=fin,
        terminated=HAND["terminated"],
        gamma=0.9,
        lam=0.8,
    )
    torch.testing.assert_close(adv, torch.tensor([3.344, 2.7, -0.01, -0.5]))
    torch.testing.assert_close(target, torch.tensor([3.844, 3.7, 1.99, 1.0]))


def test_gae_hand_example_truncation_as_termination_differs():
    fin = HAND["terminated"] | HAND["truncated"]
    adv, _ = returns.gae(HAND["rew"], HAND["value"], HAND["next_value"], fin=fin, terminated=fin, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([1.4, 0.0, -0.01, -0.5]))


def hand_fragment():
    """The hand example as a fragment of T=4 rows + lookahead, one env."""
    column = lambda *xs: torch.tensor(xs).unsqueeze(1)  # noqa: E731
    fin = column(False, False, True, False, True)
    state = State(
        stepno=column(3, 4, 0, 1, 0),
        obs=torch.zeros(5, 1, 2),
        act=column(0, 1, 0, 1, 1),
        rew=column(0.0, 1.0, 1.0, 1.0, 1.0),
        fin=fin,
        terminated=column(False, False, False, False, True),
    )
    final = Final(
        obs=torch.zeros(5, 1, 2),
        actor={"value": column(0.0, 0.0, 3.0, 0.0, 0.0)},
        episode_return=column(0.0, 0.0, 7.0, 0.0, 2.0).double(),
        episode_length=column(0, 0, 6, 0, 2),
    )
    actor = {"value": column(0.5, 1.0, 2.0, 1.5, 4.0)}
    return Fragment(state, actor, {}, (), final, torch.zeros(1, dtype=torch.int64))


def test_from_fragment_hand_example():
    inputs = returns.from_fragment(hand_fragment())
    torch.testing.assert_close(inputs.rew, HAND["rew"].unsqueeze(1))
    torch.testing.assert_close(inputs.value, HAND["value"].unsqueeze(1))
    # Row 2 holds the next episode's value 2.0; the truncation bootstraps from final.actor's 3.0.
    torch.testing.assert_close(inputs.next_value, torch.tensor([[1.0], [3.0], [1.5], [0.0]]))
    assert inputs.valid.all()
    adv, target = returns.gae(
        inputs.rew,
        inputs.value,
        inputs.next_value,
        fin=inputs.fin,
        terminated=inputs.terminated,
        gamma=0.9,
        lam=0.8,
    )
    torch.testing.assert_close(adv.squeeze(1), torch.tensor([3.344, 2.7, -0.01, -0.5]))
    torch.testing.assert_close(target.squeeze(1), torch.tensor([3.844, 3.7, 1.99, 1.0]))


# ---------------------------------------------------------------------------------------------------
# estimators against naive loops


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_discounted_returns_vs_naive(shape, gamma):
    d = make_data(shape, seed=hash((shape, gamma)) % 1000)
    out = returns.discounted_returns(d["rew"], d["next_value"], fin=d["fin"], terminated=d["terminated"], gamma=gamma)
    expected = naive_discounted(d["rew"], d["next_value"], d["fin"], d["terminated"], gamma)
    torch.testing.assert_close(out, expected)


def test_discounted_returns_without_values_sum_rewards():
    d = make_data((8, 3), seed=1)
    out = returns.discounted_returns(d["rew"], fin=d["fin"], terminated=d["terminated"], gamma=0.9)
    expected = naive_discounted(d["rew"], torch.zeros_like(d["rew"]), d["fin"], d["terminated"], 0.9)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [0.5, 0.99])
@pytest.mark.parametrize("n", [1, 2, 3, 20])
def test_n_step_returns_vs_naive(shape, gamma, n):
    d = make_data(shape, seed=n)
    out = returns.n_step_returns(d["rew"], d["next_value"], fin=d["fin"], terminated=d["terminated"], gamma=gamma, n=n)
    expected = naive_discounted(d["rew"], d["next_value"], d["fin"], d["terminated"], gamma, n=n)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("lam", LAMBDAS)
def test_gae_vs_naive(shape, gamma, lam):
    d = make_data(shape, seed=int(100 * gamma + 10 * lam))
    adv, target = returns.gae(
        d["rew"], d["value"], d["next_value"], fin=d["fin"], terminated=d["terminated"], gamma=gamma, lam=lam
    )
    masks = d["fin"], d["terminated"]
    torch.testing.assert_close(adv, naive_gae(d["rew"], d["value"], d["next_value"], *masks, gamma, lam))
    # The target is the TD(lambda) return, computed by its own recursion.
    torch.testing.assert_close(target, naive_lambda_return(d["rew"], d["next_value"], *masks, gamma, lam))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [0.5, 0.99])
@pytest.mark.parametrize("rho_bar, c_bar, lam", [(1.0, 1.0, 1.0), (2.0, 0.5, 1.0), (0.8, 0.8, 0.9), (1e9, 1e9, 1.0)])
def test_vtrace_vs_naive(shape, gamma, rho_bar, c_bar, lam):
    d = make_data(shape, seed=7)
    adv, target = returns.vtrace(
        d["rew"],
        d["value"],
        d["next_value"],
        d["log_rho"],
        fin=d["fin"],
        terminated=d["terminated"],
        gamma=gamma,
        rho_bar=rho_bar,
        c_bar=c_bar,
        lam=lam,
    )
    expected_adv, expected_target = naive_vtrace(
        d["rew"], d["value"], d["next_value"], d["log_rho"], d["fin"], d["terminated"], gamma, rho_bar, c_bar, lam
    )
    torch.testing.assert_close(target, expected_target)
    torch.testing.assert_close(adv, expected_adv)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_vtrace_on_policy_is_lambda_return(lam):
    d = make_data((10, 5), seed=3)
    _, target = returns.vtrace(
        d["rew"],
        d["value"],
        d["next_value"],
        torch.zeros_like(d["rew"]),
        fin=d["fin"],
        terminated=d["terminated"],
        gamma=0.9,
        lam=lam,
    )
    _, gae_target = returns.gae(
        d["rew"], d["value"], d["next_value"], fin=d["fin"], terminated=d["terminated"], gamma=0.9, lam=lam
    )
    torch.testing.assert_close(target, gae_target)


def test_estimators_agree_at_their_limits():
    d = make_data((12, 3), seed=5)
    common = dict(fin=d["fin"], terminated=d["terminated"], gamma=0.9)
    full = returns.discounted_returns(d["rew"], d["next_value"], **common)
    torch.testing.assert_close(returns.gae(d["rew"], d["value"], d["next_value"], lam=1.0, **common).target, full)
    torch.testing.assert_close(returns.n_step_returns(d["rew"], d["next_value"], n=12, **common), full)
    one_step = returns.gae(d["rew"], d["value"], d["next_value"], lam=0.0, **common).target
    torch.testing.assert_close(returns.n_step_returns(d["rew"], d["next_value"], n=1, **common), one_step)


def test_terminated_slots_are_not_read():
    """A NaN where the value is unused (terminated) must not leak into any estimate."""
    d = make_data((8, 4), seed=2)
    assert d["terminated"].any()
    poisoned = torch.where(d["terminated"], torch.tensor(float("nan"), dtype=torch.float64), d["next_value"])
    common = dict(fin=d["fin"], terminated=d["terminated"], gamma=0.9)
    assert torch.isfinite(returns.discounted_returns(d["rew"], poisoned, **common)).all()
    assert torch.isfinite(returns.n_step_returns(d["rew"], poisoned, n=3, **common)).all()
    for estimate in (
        returns.gae(d["rew"], d["value"], poisoned, lam=0.9, **common),
        returns.vtrace(d["rew"], d["value"], poisoned, d["log_rho"], **common),
    ):
        assert torch.isfinite(estimate.advantage).all() and torch.isfinite(estimate.target).all()


def test_next_values_vs_naive():
    d = make_data((9, 3, 2), seed=11)
    out = returns.next_values(
        d["values"], fin=d["fin"], terminated=d["terminated"], truncation_value=d["truncation_value"]
    )
    torch.testing.assert_close(out, d["next_value"])


# ---------------------------------------------------------------------------------------------------
# argument checks


def test_shape_mismatch_names_argument_and_shapes():
    d = make_data((5, 3), seed=0)
    with pytest.raises(ValueError, match=r"`value` must have the shape of `rew` .* \(5, 3\), got \(5, 2\)"):
        returns.gae(
            d["rew"], d["value"][:, :2], d["next_value"], fin=d["fin"], terminated=d["terminated"], gamma=0.9, lam=0.9
        )
    with pytest.raises(ValueError, match="`fin` must have the shape"):
        returns.discounted_returns(d["rew"], fin=d["fin"][1:], terminated=d["terminated"], gamma=0.9)
    with pytest.raises(ValueError, match=r"`value` must have shape \(1\+T, B, \.\.\.\) = \(6, 3\), got \(5, 3\)"):
        returns.next_values(d["value"], fin=d["fin"], terminated=d["terminated"], truncation_value=None)


def test_mask_checks():
    d = make_data((5, 3), seed=0)
    with pytest.raises(ValueError, match="`fin` must be a bool tensor, got dtype torch.float32"):
        returns.discounted_returns(d["rew"], fin=d["fin"].float(), terminated=d["terminated"], gamma=0.9)
    with pytest.raises(ValueError, match="`terminated` must imply `fin`"):
        returns.discounted_returns(
            d["rew"], fin=torch.zeros_like(d["fin"]), terminated=torch.ones_like(d["fin"]), gamma=0.9
        )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d, m: returns.discounted_returns(d["rew"], gamma=1.5, **m), "`gamma` must be in"),
        (lambda d, m: returns.gae(d["rew"], d["value"], d["next_value"], gamma=0.9, lam=-0.1, **m), "`lam` must be in"),
        (lambda d, m: returns.n_step_returns(d["rew"], d["next_value"], gamma=0.9, n=0, **m), "`n` must be an int"),
        (
            lambda d, m: returns.vtrace(d["rew"], d["value"], d["next_value"], d["log_rho"], gamma=0.9, c_bar=0.0, **m),
            "`c_bar` must be > 0",
        ),
        (lambda d, m: returns.next_values(d["values"], truncation_value=None, **m), "no `truncation_value`"),
    ],
)
def test_option_checks(call, message):
    d = make_data((5, 3), seed=4)
    with pytest.raises(ValueError, match=message):
        call(d, dict(fin=d["fin"], terminated=d["terminated"]))


# ---------------------------------------------------------------------------------------------------
# fragments


def test_from_fragment_reads_the_rows_of_design_section_4():
    fragment = ToyCollector(5, p_end=0.4, seed=3).fragment(8)
    inputs = returns.from_fragment(fragment)
    state, value = fragment.state, fragment.actor["value"]
    assert (inputs.fin & ~inputs.terminated).any() and inputs.terminated.any()
    torch.testing.assert_close(inputs.rew, state.rew[1:])
    torch.testing.assert_close(inputs.value, value[:-1])
    for t in range(8):
        for b in range(5):
            if state.terminated[t + 1, b]:
                expected = 0.0
            elif state.fin[t + 1, b]:
                expected = fragment.final.actor["value"][t + 1, b]
            else:
                expected = value[t + 1, b]  # for t = T-1 this is the lookahead row
            assert inputs.next_value[t, b] == expected, (t, b)


def test_from_fragment_uses_given_values_and_keeps_their_graph():
    fragment = ToyCollector(3, seed=1).fragment(5)
    value = torch.randn(6, 3, requires_grad=True)
    inputs = returns.from_fragment(fragment, value)
    assert inputs.value.grad_fn is not None
    torch.testing.assert_close(inputs.value, value[:-1].detach())


def test_from_fragment_without_values():
    fragment = ToyCollector(3, seed=1).fragment(5)
    fragment = fragment._replace(actor={}, final=fragment.final._replace(actor={}))
    inputs = returns.from_fragment(fragment)
    assert inputs.value is None and inputs.next_value is None


def test_from_fragment_truncation_without_final_value_is_an_error():
    fragment = hand_fragment()
    fragment = fragment._replace(final=fragment.final._replace(actor={}))
    with pytest.raises(ValueError, match="truncations but final.actor has no 'value'"):
        returns.from_fragment(fragment)


def test_from_fragment_value_shape_check():
    with pytest.raises(ValueError, match=r"\(1\+T, B\) = \(5, 1\), got \(4, 1\)"):
        returns.from_fragment(hand_fragment(), torch.zeros(4, 1))


def test_valid_mask_matches_the_real_transitions_of_sticky_envs():
    collector = ToyCollector(6, sticky=True, p_end=0.3, seed=5)
    fragments = [collector.fragment(7) for _ in range(3)]
    masks = [returns.valid_mask(f) for f in fragments]
    assert any((~m).any() for m in masks)
    # The collector logged the steps it really made, per env and in order.
    for env in range(6):
        made = sum(1 for tr in collector.transitions if tr.env == env)
        assert made == sum(int(m[:, env].sum()) for m in masks)
    # Every valid transition's observation is the logged one (so padding is never counted).
    logged = {env: [tr for tr in collector.transitions if tr.env == env] for env in range(6)}
    for env in range(6):
        observations = [f.state.obs[t, env] for f, m in zip(fragments, masks) for t in range(7) if m[t, env]]
        for obs, tr in zip(observations, logged[env]):
            assert torch.equal(obs, tr.obs)


def test_valid_mask_drops_the_step_out_of_the_freeze():
    """fin at row 2 (a real end), frozen after: transitions 0, 1 are real, 2.. are not."""
    fragment = hand_fragment()
    state = fragment.state._replace(
        fin=torch.tensor([True, False, True, True, True]).unsqueeze(1),
        terminated=torch.tensor([False, False, True, True, True]).unsqueeze(1),
    )
    final = fragment.final._replace(episode_length=torch.tensor([0, 0, 4, 0, 0]).unsqueeze(1))
    mask = returns.valid_mask(fragment._replace(state=state, final=final))
    assert mask.squeeze(1).tolist() == [True, True, False, False]


def test_from_fragment_with_module_values():
    module = MLPActor()
    fragment = ToyCollector(4, module=module, seed=2).fragment(6)
    inputs = returns.from_fragment(fragment)
    truncated = inputs.fin & ~inputs.terminated
    assert truncated.any()
    with torch.no_grad():
        recomputed = module.value(fragment.final.obs[1:]).squeeze(-1)
    torch.testing.assert_close(inputs.next_value[truncated], recomputed[truncated])
