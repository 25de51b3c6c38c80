"""learners.sac: squashed Gaussian, the soft target, gradient routing, temperature, Polyak."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.distributions import AffineTransform, Independent, Normal, TanhTransform, TransformedDistribution

from learners import sac
from learners.replay import ReplayBuffer, Transitions
from tests.learners_fixtures import QNet, SquashedPolicy, gradients, has_gradient, snapshot, tree_equal
from tests.test_replay import EXPECTED, FIRST, SECOND


def batch(n=32, obs_dim=4, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Transitions(
        obs=torch.randn(n, obs_dim, generator=g),
        act=torch.rand(n, act_dim, generator=g) * 2 - 1,
        rew=torch.randn(n, generator=g),
        terminated=torch.rand(n, generator=g) < 0.3,
        next_obs=torch.randn(n, obs_dim, generator=g),
    )


def networks(seed=0):
    torch.manual_seed(seed)
    q1, q2 = QNet(), QNet()
    return SquashedPolicy(), q1, q2, copy.deepcopy(q1), copy.deepcopy(q2)


# ---------------------------------------------------------------------------------------------------
# the squashed Gaussian


def reference(mean, log_std, scale, bias):
    return Independent(
        TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform(), AffineTransform(bias, scale)]), 1
    )


def test_tanh_log_prob_matches_transformed_distribution():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(50, 3, generator=g, dtype=torch.float64)
    log_std = torch.randn(50, 3, generator=g, dtype=torch.float64) * 0.5 - 0.5
    pre_tanh = mean + log_std.exp() * torch.randn(50, 3, generator=g, dtype=torch.float64)
    scale, bias = sac.action_scaling(torch.tensor([-2.0, 0.0, -1.0]), torch.tensor([2.0, 1.0, 3.0]))
    scale, bias = scale.double(), bias.double()
    action = scale * torch.tanh(pre_tanh) + bias
    expected = reference(mean, log_std, scale, bias).log_prob(action)
    torch.testing.assert_close(sac.tanh_normal_log_prob(mean, log_std, pre_tanh, scale=scale), expected)


def test_tanh_sample_is_consistent_with_log_prob():
    mean = torch.randn(40, 2, dtype=torch.float64, requires_grad=True)
    log_std = torch.full((40, 2), -0.3, dtype=torch.float64, requires_grad=True)
    generator = torch.Generator().manual_seed(3)
    action, log_prob = sac.tanh_normal_sample(mean, log_std, scale=2.0, bias=1.0, generator=generator)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pre_tanh = mean + log_std.exp() * noise
    torch.testing.assert_close(action, 2.0 * torch.tanh(pre_tanh) + 1.0)
    torch.testing.assert_close(log_prob, sac.tanh_normal_log_prob(mean, log_std, pre_tanh, scale=2.0))
    assert ((action > -1.0) & (action < 3.0)).all()
    log_prob.sum().backward()  # reparameterised: gradients reach mean and log_std
    assert mean.grad.abs().sum() > 0 and log_std.grad.abs().sum() > 0


def test_tanh_log_prob_is_stable_where_tanh_saturates():
    mean = torch.tensor([[20.0, -25.0]])
    log_std = torch.tensor([[-1.0, 0.0]])
    pre_tanh = mean.clone()
    out = sac.tanh_normal_log_prob(mean, log_std, pre_tanh)
    # log(1 - tanh(u)^2) = log 4 - 2|u| - 2 log(1 + exp(-2|u|)), in float64.
    u, s = pre_tanh.double(), log_std.double()
    log_det = math.log(4.0) - 2 * u.abs() - 2 * torch.log1p(torch.exp(-2 * u.abs()))
    expected = (-s - 0.5 * math.log(2 * math.pi) - log_det).sum(-1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected)
    naive = (Normal(mean, log_std.exp()).log_prob(pre_tanh) - torch.log(1 - torch.tanh(pre_tanh) ** 2)).sum(-1)
    assert not torch.isfinite(naive).all()  # what the stable form avoids


def test_action_scaling_errors():
    with pytest.raises(ValueError, match="finite with low < high"):
        sac.action_scaling(torch.tensor([1.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="same shape"):
        sac.action_scaling(torch.zeros(2), torch.ones(3))


# ---------------------------------------------------------------------------------------------------
# the target


def test_q_target_hand_example():
    # rows: ongoing, terminated, truncated (not terminated: bootstraps from the final observation)
    rew = torch.tensor([1.0, 2.0, 3.0])
    terminated = torch.tensor([False, True, False])
    next_q1 = torch.tensor([4.0, 10.0, 2.0])
    next_q2 = torch.tensor([6.0, 10.0, 1.0])
    next_log_prob = torch.tensor([-1.0, 5.0, 2.0])
    out = sac.q_target(rew, terminated, next_q1, next_q2, next_log_prob, alpha=0.1, gamma=0.5)
    # 1 + 0.5 * (min(4, 6) + 0.1);  2 (no bootstrap);  3 + 0.5 * (min(2, 1) - 0.2)
    torch.testing.assert_close(out, torch.tensor([3.05, 2.0, 3.4]))


class Linear1(nn.Module):
    """Q(obs, act) = w * obs + c * act, scalar obs and action."""

    def __init__(self, w=0.0, c=0.0):
        super().__init__()
        self.w, self.c = nn.Parameter(torch.tensor(w)), nn.Parameter(torch.tensor(c))

    def forward(self, obs, act):
        return self.w * obs.squeeze(-1) + self.c * act.squeeze(-1)


class Fixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, obs):
        return self.p.expand(obs.shape[0], 1), torch.zeros(obs.shape[0], 1)


def test_critic_loss_on_fragments_bootstraps_truncations_not_terminations():
    """The replay example: the truncated 11 -> 12 bootstraps from 12, the terminal 50 -> 51 does not."""
    buffer = ReplayBuffer(20)
    buffer.add(FIRST)
    buffer.add(SECOND)
    data = buffer.contents()
    q1, q2 = Linear1(), Linear1()
    q1_target, q2_target = Linear1(w=1.0), Linear1(w=2.0)  # min picks q1_target: next_obs itself
    loss, info = sac.critic_loss(data, Fixed(), q1, q2, q1_target, q2_target, log_alpha=-math.inf, gamma=0.5)
    target = torch.tensor([o / 100 + (0.0 if d else 0.5 * n) for o, d, n in EXPECTED])
    assert info["target_mean"] == pytest.approx(float(target.mean()), rel=1e-6)
    # Q = 0, so each half-MSE is 0.5 * mean(y^2).
    assert info["q1_loss"] == pytest.approx(float(0.5 * (target**2).mean()), rel=1e-6)
    assert loss.item() == pytest.approx(float((target**2).mean()), rel=1e-6)


def test_critic_loss_uses_the_entropy_term():
    policy, q1, q2, q1_target, q2_target = networks()
    data = batch()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    _, info = sac.critic_loss(
        data, policy, q1, q2, q1_target, q2_target, log_alpha=math.log(0.2), gamma=0.9, generator=g()
    )
    with torch.no_grad():
        act, log_prob = sac.tanh_normal_sample(*policy(data.next_obs), generator=g())
        soft = torch.min(q1_target(data.next_obs, act), q2_target(data.next_obs, act)) - 0.2 * log_prob
        target = data.rew + 0.9 * torch.where(data.terminated, 0.0, soft)
    assert info["target_mean"] == pytest.approx(float(target.mean()), rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# gradient routing, temperature, statelessness


def test_each_loss_reaches_only_its_own_parameters():
    policy, q1, q2, q1_target, q2_target = networks()
    log_alpha = torch.zeros((), requires_grad=True)
    everything = nn.ModuleDict(dict(policy=policy, q1=q1, q2=q2, q1_target=q1_target, q2_target=q2_target))
    data = batch()
    critic = gradients(everything, sac.critic_loss(data, policy, q1, q2, q1_target, q2_target, log_alpha=log_alpha)[0])
    assert has_gradient(critic, "q1.") and has_gradient(critic, "q2.")
    assert not any(has_gradient(critic, k) for k in ("policy.", "q1_target.", "q2_target."))
    assert log_alpha.grad is None
    actor = gradients(everything, sac.actor_loss(data, policy, q1, q2, log_alpha=log_alpha)[0])
    assert has_gradient(actor, "policy.")
    assert all(g is None for n, g in actor.items() if not n.startswith("policy."))
    assert log_alpha.grad is None
    alpha = gradients(everything, sac.alpha_loss(data, policy, log_alpha)[0])
    assert all(g is None for g in alpha.values()) and log_alpha.grad is not None


def test_actor_gradient_flows_through_the_action():
    policy, q1, q2, _, _ = networks(1)
    data = batch()
    g = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    grads = gradients(policy, sac.actor_loss(data, policy, q1, q2, log_alpha=math.log(0.3), generator=g())[0])
    act, log_prob = sac.tanh_normal_sample(*policy(data.obs), generator=g())
    manual = (0.3 * log_prob - torch.min(q1(data.obs, act), q2(data.obs, act))).mean()
    expected = gradients(policy, manual)
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name])


class ConstantStd(nn.Module):
    def __init__(self, log_std):
        super().__init__()
        self.log_std = log_std

    def forward(self, obs):
        return torch.zeros(obs.shape[0], 2), torch.full((obs.shape[0], 2), self.log_std)


@pytest.mark.parametrize("log_std, alpha_grows", [(-4.0, True), (0.5, False)])
def test_alpha_gradient_sign(log_std, alpha_grows):
    """Entropy below the target (-2 for 2 dims) raises alpha under gradient descent; above lowers it."""
    log_alpha = torch.zeros((), requires_grad=True)
    loss, info = sac.alpha_loss(batch(256), ConstantStd(log_std), log_alpha, generator=torch.Generator().manual_seed(0))
    assert info["target_entropy"] == -2.0
    assert (info["entropy"] < -2.0) == alpha_grows
    loss.backward()
    assert (log_alpha.grad < 0) == alpha_grows
    torch.optim.SGD([log_alpha], lr=0.1).step()
    assert (log_alpha.item() > 0) == alpha_grows


def test_stateless():
    policy, q1, q2, q1_target, q2_target = networks()
    modules = nn.ModuleDict(dict(policy=policy, q1=q1, q2=q2, q1_target=q1_target, q2_target=q2_target))
    log_alpha = torch.tensor(-1.0, requires_grad=True)
    data = batch()
    before = snapshot(data)
    calls = [
        lambda g: sac.critic_loss(data, policy, q1, q2, q1_target, q2_target, log_alpha=log_alpha, generator=g),
        lambda g: sac.actor_loss(data, policy, q1, q2, log_alpha=log_alpha, generator=g),
        lambda g: sac.alpha_loss(data, policy, log_alpha, generator=g),
    ]
    for call in calls:
        results = []
        for _ in range(2):
            log_alpha.grad = None
            loss, info = call(torch.Generator().manual_seed(4))
            results.append((loss.detach(), info, gradients(modules, loss), log_alpha.grad))
        (loss_a, info_a, grads_a, alpha_a), (loss_b, info_b, grads_b, alpha_b) = results
        assert torch.equal(loss_a, loss_b) and info_a == info_b
        assert all((grads_a[n] is None and grads_b[n] is None) or torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
        assert (alpha_a is None and alpha_b is None) or torch.equal(alpha_a, alpha_b)
    assert tree_equal(data, before)


def test_shape_errors():
    policy, q1, _, _, _ = networks()

    class Wide(nn.Module):
        def forward(self, obs, act):
            return torch.zeros(obs.shape[0], 2)

    with pytest.raises(ValueError, match=r"q2\(obs, act\) must return shape \(32,\) or \(32, 1\), got \(32, 2\)"):
        sac.actor_loss(batch(), policy, q1, Wide(), log_alpha=0.0)
    with pytest.raises(ValueError, match="`log_alpha` must be a scalar tensor"):
        sac.alpha_loss(batch(), policy, 0.0)
    with pytest.raises(ValueError, match=r"`next_q2` must have the shape of `rew` \(3,\), got \(2,\)"):
        zeros = torch.zeros(3)
        sac.q_target(zeros, zeros.bool(), zeros, torch.zeros(2), zeros, alpha=0.1, gamma=0.9)


# ---------------------------------------------------------------------------------------------------
# Polyak


def with_norm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    net(torch.randn(8, 3))  # moves the running statistics and the batch counter
    return net


@pytest.mark.parametrize("tau", [0.0, 0.25, 1.0])
def test_polyak_update(tau):
    source = with_norm()
    target = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    old_target = copy.deepcopy(target.state_dict())
    old_source = copy.deepcopy(source.state_dict())
    sac.polyak_update(target, source, tau=tau)
    for name, value in target.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (1 - tau) * old_target[name] + tau * old_source[name])
        else:  # num_batches_tracked
            assert torch.equal(value, old_source[name])
    assert all(torch.equal(v, old_source[k]) for k, v in source.state_dict().items())


def test_polyak_errors_leave_the_target_alone():
    target = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError, match=r"parameter '1.weight' has shape \(2, 3\) in target, \(4, 3\) in source"):
        sac.polyak_update(target, nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 4)), tau=0.5)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    with pytest.raises(ValueError, match="only in source"):
        sac.polyak_update(target, nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2), nn.Linear(2, 2)), tau=0.5)
    with pytest.raises(ValueError, match=r"`tau` must be in \[0, 1\], got 1.5"):
        sac.polyak_update(target, target, tau=1.5)
