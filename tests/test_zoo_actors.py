"""zoo.actors and zoo.normalize: shapes, init, replay of recurrent fragments, SAC's actor and critics."""

import copy
import itertools
import math

import gymnasium
import numpy as np
import pytest
import torch

from learners import _policy, ppo, sac
from learners.replay import transitions
from learners.returns import valid_mask
from rollout import same
from rollout.sync import WeightStore
from zoo.actors import CategoricalGRU, CategoricalMLP, GaussianPolicy, QNetwork, SquashedGaussian
from zoo.normalize import RunningNorm


def make_cartpole():
    return gymnasium.make("CartPole-v1")


def make_pendulum():
    return gymnasium.make("Pendulum-v1")


def step(actor, obs, *, hx=None):
    """One call of ``actor.step`` on ``obs`` ``(n_seq, B, ...)`` with no episode boundary."""
    n_seq, B = obs.shape[:2]
    zeros = torch.zeros((n_seq, B), dtype=torch.int64)
    return actor.step(zeros, obs, zeros, zeros.float(), zeros.bool(), hx=hx, virtual=False)


def synced_copy(source, fresh):
    """``fresh`` after a publish of ``source`` and a pull through the collectors' weight store."""
    store = WeightStore(source)
    store.publish(source)
    store.pull(fresh, -1)
    return fresh


# ------------------------------------------------------------------------------------ RunningNorm
def test_running_norm_matches_numpy_over_masked_updates():
    torch.manual_seed(0)
    norm = RunningNorm((3,))
    x1 = torch.randn(5, 4, 3) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([2.0, -3.0, 0.5])
    m1 = torch.rand(5, 4) < 0.5
    x2 = torch.randn(7, 3) * 2.0 + 1.0  # no mask: every row
    x3 = torch.randn(6, 3) * 100.0
    m3 = torch.zeros(6, dtype=torch.bool)  # nothing selected: no change
    norm.update(x1, m1)
    norm.update(x2)
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    norm.update(x3, m3)
    for key, value in norm.state_dict().items():
        assert torch.equal(value, before[key]), key
    rows = np.concatenate([x1.numpy()[m1.numpy()], x2.numpy()]).astype(np.float64)
    np.testing.assert_allclose(norm.mean.numpy(), rows.mean(0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), rows.var(0), rtol=1e-5, atol=1e-5)
    assert norm.count.item() == pytest.approx(len(rows) + 1e-8, abs=1e-12)
    x = torch.randn(2, 3)
    expected = (x.numpy() - rows.mean(0)) / np.sqrt(rows.var(0) + 1e-8)
    out = norm(x)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_running_norm_is_the_identity_before_updates_and_clips():
    norm = RunningNorm((2,), clip=5.0)
    assert torch.equal(norm.mean, torch.zeros(2, dtype=torch.float64)) and torch.equal(
        norm.var, torch.ones(2, dtype=torch.float64)
    )
    assert norm.count.item() == 1e-8
    x = torch.tensor([[0.5, -2.0], [4.0, 1.0]])
    torch.testing.assert_close(norm(x), x, rtol=1e-7, atol=0)
    assert norm(torch.tensor([[7.0, -100.0]])).tolist() == [[5.0, -5.0]]
    assert norm(torch.tensor([[3, 200]], dtype=torch.uint8)).dtype == torch.float32
    # scale only: mean 10, var 4 -> x / 2, not (x - 10) / 2
    scale = RunningNorm((), center=False)
    scale.update(torch.tensor([8.0, 12.0, 8.0, 12.0]).reshape(2, 2), torch.ones(2, 2, dtype=torch.bool))
    assert scale.mean.item() == pytest.approx(10.0) and scale.var.item() == pytest.approx(4.0)
    torch.testing.assert_close(scale(torch.tensor([6.0, -2.0])), torch.tensor([3.0, -1.0]))


def test_running_norm_state_dict_and_errors():
    norm = RunningNorm((3,))
    norm.update(torch.arange(12.0).reshape(4, 3))
    state = norm.state_dict()
    assert set(state) == {"mean", "var", "count"}
    other = RunningNorm((3,))
    other.load_state_dict(state)
    x = torch.randn(5, 3)
    assert torch.equal(other(x), norm(x))
    with pytest.raises(ValueError, match=r"trailing dims \(3,\)"):
        norm.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"`mask` must be a bool tensor of shape \(4,\)"):
        norm.update(torch.zeros(4, 3), torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`mask` must be a bool tensor"):
        norm.update(torch.zeros(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="clip"):
        RunningNorm((3,), clip=0.0)


# --------------------------------------------------------------------------------- CategoricalMLP
def test_mlp_shapes_and_deterministic_argmax():
    torch.manual_seed(0)
    actor = CategoricalMLP(4, 3, (16, 16))  # positional hidden still works
    obs = torch.randn(2, 500, 4) * 50
    action, hx, info = step(actor, obs)
    assert hx == () and action.shape == (2, 500) and action.dtype == torch.int64
    assert info["logits"].shape == (2, 500, 3) and info["value"].shape == (2, 500)
    greedy = info["logits"].argmax(-1)
    assert (action != greedy).any()  # sampled
    actor.deterministic = True
    action, _, _ = step(actor, obs)
    assert torch.equal(action, greedy)
    # the engine's baselines call it without stepno/act/rew/fin
    action, _, _ = actor.step(None, obs[:1], None, None, None, hx=(), virtual=False)
    assert action.shape == (1, 500)


def test_mlp_orthogonal_init():
    actor = CategoricalMLP(4, 2, (64, 32), shared=False)
    for body in (actor.body, actor.value_body):
        first, second = body[0].weight, body[2].weight  # (64, 4), (32, 64)
        torch.testing.assert_close(first.T @ first, 2.0 * torch.eye(4), rtol=0, atol=1e-5)
        torch.testing.assert_close(second @ second.T, 2.0 * torch.eye(32), rtol=0, atol=1e-5)
        assert isinstance(body[1], torch.nn.Tanh)
    torch.testing.assert_close(actor.policy.weight @ actor.policy.weight.T, 1e-4 * torch.eye(2), rtol=0, atol=1e-9)
    torch.testing.assert_close(actor.value.weight.square().sum(), torch.tensor(1.0))
    for name, p in actor.named_parameters():
        if name.endswith("bias"):
            assert not p.any(), name


@pytest.mark.parametrize("shared", [True, False])
def test_mlp_value_loss_reaches_the_policy_trunk_only_when_shared(shared):
    actor = CategoricalMLP(4, 2, shared=shared)
    _, _, info = step(actor, torch.randn(3, 5, 4))
    info["value"].square().sum().backward()
    assert actor.policy.weight.grad is None
    assert actor.value.weight.grad.abs().sum() > 0
    reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in actor.body.parameters()]
    assert all(reached) if shared else not any(reached)
    if not shared:
        assert all(p.grad.abs().sum() > 0 for p in actor.value_body.parameters())
        assert actor.body is not actor.value_body


def test_mlp_normalizes_observations_with_synced_statistics():
    torch.manual_seed(0)
    actor = CategoricalMLP(4, 2, normalize_obs=True)
    assert isinstance(actor.obs_norm, RunningNorm) and CategoricalMLP(4, 2).obs_norm is None
    actor.obs_norm.update(torch.randn(100, 4) * 5 + 3)
    plain = CategoricalMLP(4, 2)
    plain.load_state_dict({k: v for k, v in actor.state_dict().items() if not k.startswith("obs_norm.")})
    obs = torch.randn(1, 6, 4) * 5 + 3
    scaled = (obs - actor.obs_norm.mean.float()) / torch.sqrt(actor.obs_norm.var + 1e-8).float()
    torch.testing.assert_close(step(actor, obs)[2], step(plain, scaled)[2])
    worker = synced_copy(actor, CategoricalMLP(4, 2, normalize_obs=True))
    for key in ("mean", "var", "count"):
        assert torch.equal(getattr(worker.obs_norm, key), getattr(actor.obs_norm, key)), key


def test_mlp_collects_cartpole_fragments():
    actor = CategoricalMLP(4, 2, normalize_obs=True)
    with same.rollout(make_cartpole, actor, 8, n_envs=3, seed=0) as feed:
        for fragment in itertools.islice(feed, 2):
            assert fragment.state.act.shape == (9, 3) and fragment.state.act.dtype == torch.int64
            assert set(fragment.state.act[1:].unique().tolist()) <= {0, 1}
            assert fragment.actor["logits"].shape == (9, 3, 2) and fragment.actor["value"].shape == (9, 3)
            actor.obs_norm.update(fragment.state.obs[:-1], valid_mask(fragment))
    assert actor.obs_norm.count.item() == pytest.approx(2 * 8 * 3)


# --------------------------------------------------------------------------------- CategoricalGRU
@pytest.mark.parametrize(
    "separate_critic, feed_action, cell",
    [(True, False, "gru"), (False, False, "gru"), (True, True, "gru"), (True, True, "lstm"), (False, False, "lstm")],
)
def test_gru_minibatches_replay_the_collected_logits(separate_critic, feed_action, cell):
    torch.manual_seed(0)
    actor = CategoricalGRU(4, 2, separate_critic=separate_critic, feed_action=feed_action, cell=cell)
    generator = torch.Generator().manual_seed(0)
    n_boundaries = 0
    with same.rollout(make_cartpole, actor, n_steps=16, n_envs=4, sticky=True, seed=0) as feed:
        for fragment in itertools.islice(feed, 3):
            fragment = fragment.clone()
            rows = (2 if separate_critic else 1) * (2 if cell == "lstm" else 1)
            assert fragment.hx.shape == (rows, 4, 64)
            fin = fragment.state.fin[:-1]
            n_boundaries += int(fin[1:].sum())
            prepared = ppo.prepare(fragment, actor)
            # Preparation replays all 1+T rows from fragment.hx: the collector's values, row for row.
            torch.testing.assert_close(prepared.value, fragment.actor["value"][:-1], rtol=1e-6, atol=1e-6)
            seen = []
            for minibatch in ppo.minibatches(prepared, 2, sequences=True, generator=generator):
                assert minibatch.hx.shape == (fragment.hx.shape[0], 2, 64)
                # which fragment column each minibatch column is
                columns = [
                    next(i for i in range(4) if torch.equal(minibatch.state.obs[:, j], fragment.state.obs[:-1, i]))
                    for j in range(2)
                ]
                seen += columns
                info = _policy.evaluate(actor, minibatch.state, minibatch.hx)
                recorded = fragment.actor["logits"][:-1, columns]
                torch.testing.assert_close(info["logits"], recorded, rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(info["value"], fragment.actor["value"][:-1, columns], rtol=1e-6, atol=1e-6)
                if minibatch.state.fin[1:].any():
                    # Without the resets at fin the replay would differ: the check has teeth.
                    state = minibatch.state._replace(fin=torch.zeros_like(minibatch.state.fin))
                    assert not torch.allclose(_policy.evaluate(actor, state, minibatch.hx)["logits"], recorded)
            assert sorted(seen) == [0, 1, 2, 3]
    assert n_boundaries > 0  # episodes ended inside fragments, so the reset path was exercised


def test_gru_hx_and_separate_critic():
    torch.manual_seed(0)
    actor = CategoricalGRU(4, 3, 8, separate_critic=True)  # positional hidden still works
    obs = torch.randn(5, 2, 4)
    action, hx, info = step(actor, obs)
    assert action.shape == (5, 2) and hx.shape == (2, 2, 8)
    assert info["logits"].shape == (5, 2, 3) and info["value"].shape == (5, 2)
    # continuing from hx equals running the whole sequence
    _, hx_a, _ = step(actor, obs[:3])
    _, hx_b, info_b = step(actor, obs[3:], hx=hx_a)
    torch.testing.assert_close(info_b["logits"], info["logits"][3:])
    torch.testing.assert_close(hx_b, hx)
    # the value loss never reaches the policy's trunk, and the policy loss never the critic's
    info["value"].sum().backward()
    assert all(p.grad is None for m in (actor.embed, actor.cell, actor.policy) for p in m.parameters())
    assert all(p.grad.abs().sum() > 0 for m in (actor.critic_embed, actor.critic_cell) for p in m.parameters())
    shared = CategoricalGRU(4, 3, 8)
    _, hx, info = step(shared, obs)
    assert hx.shape == (1, 2, 8) and shared.critic_cell is None
    info["value"].sum().backward()
    assert shared.cell.weight_hh_l0.grad.abs().sum() > 0
    torch.testing.assert_close(shared.policy.weight @ shared.policy.weight.T, 1e-4 * torch.eye(3), rtol=0, atol=1e-9)


def test_lstm_cell_state_rows_and_continuation():
    torch.manual_seed(0)
    actor = CategoricalGRU(4, 3, 8, separate_critic=True, cell="lstm")
    assert isinstance(actor.cell, torch.nn.LSTM) and isinstance(actor.critic_cell, torch.nn.LSTM)
    obs = torch.randn(5, 2, 4)
    _, hx, info = step(actor, obs)
    assert hx.shape == (4, 2, 8)  # policy (h, c), critic (h, c)
    assert not torch.equal(hx[0], hx[1])  # h and c are both kept
    _, hx_a, _ = step(actor, obs[:3])
    _, hx_b, info_b = step(actor, obs[3:], hx=hx_a)
    torch.testing.assert_close(info_b["logits"], info["logits"][3:])
    torch.testing.assert_close(info_b["value"], info["value"][3:])
    torch.testing.assert_close(hx_b, hx)
    # dropping the cell state c changes what follows: the continuation really uses it
    _, _, info_c = step(actor, obs[3:], hx=torch.cat([hx_a[:1], torch.zeros_like(hx_a[:1]), hx_a[2:]]))
    assert not torch.allclose(info_c["logits"], info["logits"][3:])
    with pytest.raises(ValueError, match="cell must be 'gru' or 'lstm', got 'rnn'"):
        CategoricalGRU(4, 3, cell="rnn")


def test_gru_zeroes_the_state_at_fin():
    torch.manual_seed(0)
    actor = CategoricalGRU(4, 2, 8, normalize_obs=True)
    obs = torch.randn(3, 2, 4)
    fin = torch.tensor([[False, False], [True, False], [False, False]])
    zeros = torch.zeros((3, 2), dtype=torch.int64)
    hx = torch.randn(1, 2, 8)
    _, _, info = actor.step(zeros, obs, zeros, zeros.float(), fin, hx=hx, virtual=True)
    # env 0 restarts at row 1: rows 1.. equal a fresh run from zeros
    _, _, fresh = step(actor, obs[1:, :1], hx=torch.zeros(1, 1, 8))
    torch.testing.assert_close(info["logits"][1:, :1], fresh["logits"])
    _, _, carried = step(actor, obs[1:, :1], hx=step(actor, obs[:1, :1], hx=hx[:, :1])[1])
    assert not torch.allclose(info["logits"][1:, :1], carried["logits"])


# ------------------------------------------------------------------------------- SquashedGaussian
LOW, HIGH = [-1.0, 0.0], [3.0, 0.5]


def test_squashed_gaussian_random_warm_up_actions():
    actor = SquashedGaussian(3, LOW, HIGH, (32, 32))
    assert actor.random_actions.dtype == torch.bool and bool(actor.random_actions)
    assert torch.equal(actor.scale, torch.tensor([2.0, 0.25])) and torch.equal(actor.bias, torch.tensor([1.0, 0.25]))
    obs = torch.randn(1, 4000, 3)
    torch.manual_seed(1)
    action, hx, info = step(actor, obs)
    assert hx == () and info == {}
    assert action.shape == (1, 4000, 2) and action.dtype == torch.float32
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    assert ((action >= low) & (action <= high)).all()
    width = high - low
    flat = action.reshape(-1, 2)
    torch.testing.assert_close(flat.mean(0), (low + high) / 2, rtol=0, atol=0.05 * width.max().item())
    torch.testing.assert_close(flat.std(0), width / math.sqrt(12), rtol=0.05, atol=0)  # uniform's std
    assert (flat.min(0).values < low + 0.01 * width).all() and (flat.max(0).values > high - 0.01 * width).all()
    torch.manual_seed(1)
    assert torch.equal(step(actor, obs * 10)[0], action)  # independent of the observation
    actor.random_actions.fill_(False)
    torch.manual_seed(1)
    assert not torch.allclose(step(actor, obs)[0], action)  # the policy's samples differ


def test_squashed_gaussian_policy_samples_and_deterministic():
    torch.manual_seed(0)
    actor = SquashedGaussian(3, LOW, HIGH, (32, 32))
    actor.random_actions.fill_(False)
    obs = torch.randn(3, 50, 3)
    torch.manual_seed(1)
    action, _, _ = step(actor, obs)
    mean, log_std = actor.policy(obs.reshape(150, 3))
    assert mean.shape == log_std.shape == (150, 2)
    torch.manual_seed(1)
    expected, _ = sac.tanh_normal_sample(mean, log_std, scale=actor.scale, bias=actor.bias)
    assert torch.equal(action, expected.reshape(3, 50, 2))
    assert ((action >= torch.tensor(LOW)) & (action <= torch.tensor(HIGH))).all()
    greedy = (actor.scale * torch.tanh(mean) + actor.bias).reshape(3, 50, 2)
    actor.deterministic = True
    assert torch.equal(step(actor, obs)[0], greedy)
    assert torch.equal(step(actor, obs[2:, 7:8])[0], greedy[2:, 7:8])  # row (t, b) is obs[t, b]'s action
    actor.random_actions.fill_(True)  # evaluation measures the policy even during the warm-up
    assert torch.equal(step(actor, obs)[0], greedy)


def test_squashed_gaussian_log_std_is_clamped():
    policy = GaussianPolicy(2, 1, (8,))
    with torch.no_grad():
        policy.log_std.bias.fill_(50.0)
    assert policy(torch.zeros(4, 2))[1].max().item() == 2.0
    with torch.no_grad():
        policy.log_std.bias.fill_(-50.0)
    assert policy(torch.zeros(4, 2))[1].min().item() == -5.0


def test_squashed_gaussian_state_dict_and_sync():
    actor = SquashedGaussian(3, LOW, HIGH, normalize_obs=True)
    keys = set(actor.state_dict())
    assert {"random_actions", "scale", "bias", "policy.obs_norm.mean", "policy.obs_norm.var"} <= keys
    assert not any(key.startswith("obs_norm.") for key in keys)  # saved once, inside the policy
    assert actor.obs_norm is actor.policy.obs_norm and isinstance(actor.obs_norm, RunningNorm)
    assert SquashedGaussian(3, LOW, HIGH).obs_norm is None
    actor.random_actions.fill_(False)
    actor.obs_norm.update(torch.randn(10, 3) + 4)
    worker = synced_copy(actor, SquashedGaussian(3, LOW, HIGH, normalize_obs=True))
    assert not bool(worker.random_actions)
    assert torch.equal(worker.obs_norm.mean, actor.obs_norm.mean)
    with pytest.raises(ValueError, match="1-D"):
        SquashedGaussian(3, [[0.0]], [[1.0]])
    with pytest.raises(ValueError, match="finite with low < high"):
        SquashedGaussian(3, [1.0], [-1.0])


def test_squashed_gaussian_on_pendulum_with_sac_losses():
    torch.manual_seed(0)
    actor = SquashedGaussian(3, [-2.0], [2.0], (32, 32), normalize_obs=True)
    q1, q2 = (QNetwork(3, 1, (32, 32), obs_norm=actor.obs_norm) for _ in range(2))
    q1_target, q2_target = copy.deepcopy(q1), copy.deepcopy(q2)
    with same.rollout(make_pendulum, actor, 8, n_envs=2, seed=0) as feed:
        warm_up = next(feed).clone()
        actor.random_actions.fill_(False)
        on_policy = next(feed).clone()
    for fragment in (warm_up, on_policy):
        act = fragment.state.act
        assert act.shape == (9, 2, 1) and act.dtype == torch.float32
        assert ((act >= -2.0) & (act <= 2.0)).all() and fragment.actor == {}
    batch = transitions(on_policy)
    actor.obs_norm.update(batch.obs)
    assert q1.obs_norm is actor.obs_norm and q1_target.obs_norm is actor.obs_norm  # shared, not copied
    loss, info = sac.critic_loss(
        batch, actor.policy, q1, q2, q1_target, q2_target, log_alpha=0.0, scale=actor.scale, bias=actor.bias
    )
    loss.backward()
    assert math.isfinite(info["critic_loss"])
    assert all(p.grad is not None for p in itertools.chain(q1.parameters(), q2.parameters()))
    assert all(p.grad is None for p in actor.parameters())
    q1.zero_grad(set_to_none=True)
    loss, info = sac.actor_loss(batch, actor.policy, q1, q2, log_alpha=0.0, scale=actor.scale, bias=actor.bias)
    loss.backward()
    assert math.isfinite(info["actor_loss"])
    assert all(p.grad is not None for p in actor.policy.mean.parameters())
    assert all(p.grad is None for p in q1.parameters())


def test_q_network_references_the_observation_norm():
    torch.manual_seed(0)
    norm = RunningNorm((3,))
    q = QNetwork(3, 2, (16,), obs_norm=norm)
    plain = QNetwork(3, 2, (16,))
    plain.load_state_dict(q.state_dict())  # same keys: the norm is not saved with the critic
    assert not any("obs_norm" in key for key in q.state_dict()) and len(list(q.modules())) == len(list(plain.modules()))
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    assert q(obs, act).shape == (5,)
    torch.testing.assert_close(q(obs, act), plain(obs, act), rtol=1e-6, atol=1e-7)  # identity before updates
    norm.update(torch.randn(50, 3) * 3 + 2)
    scaled = (obs - norm.mean.float()) / torch.sqrt(norm.var + 1e-8).float()
    torch.testing.assert_close(q(obs, act), plain(scaled, act))
    target = copy.deepcopy(q)
    assert target.obs_norm is norm
    with pytest.raises(ValueError, match="RunningNorm"):
        QNetwork(3, 2, obs_norm=torch.nn.Identity())


def test_atari_conv_is_initialised_as_cleanrl_ppo_atari():
    """Orthogonal weights, zero biases; gain sqrt(2) in the trunk, 0.01 policy head, 1 value head."""
    import math

    from zoo.actors import AtariConv

    actor = AtariConv(n_act=6)
    layers = [m for m in actor.body if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for layer, gain in [*((layer, math.sqrt(2)) for layer in layers), (actor.policy, 0.01), (actor.value, 1.0)]:
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        assert w.shape[0] <= w.shape[1]  # rows orthogonal: w @ w.T = gain^2 I
        assert torch.allclose(w @ w.T, gain**2 * torch.eye(w.shape[0]), atol=1e-4 * max(1.0, gain**2)), layer
        assert torch.count_nonzero(layer.bias) == 0
