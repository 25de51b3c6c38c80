"""learners.ppo: preparation, minibatches, the clipped surrogate, and its relation to A2C."""

import math

import optree
import pytest
import torch
from torch.distributions import Categorical

from learners import a2c, ppo
from rollout.errors import ActorContractError
from tests.learners_fixtures import (
    assert_stateless,
    GRUActor,
    GaussianActor,
    MLPActor,
    collect,
    gradients,
    has_gradient,
    lagged,
    perturb_padding,
    rewarded_action_probability,
    tree_equal,
)


@pytest.mark.parametrize("make, skip", [(MLPActor, 0), (GRUActor, 1)])
def test_first_minibatch_policy_gradient_equals_a2c(make, skip):
    module = make()
    fragment = collect(module, skip=skip)
    common = dict(gamma=0.9, value_coef=0.0, entropy_coef=0.0)
    ppo_loss, info = ppo.loss(fragment, module, lam=0.95, normalize_advantages=False, **common)
    assert info["ratio_mean"] == pytest.approx(1.0) and info["clipfrac"] == 0.0
    ppo_grads = gradients(module, ppo_loss)
    a2c_grads = gradients(module, a2c.loss(fragment, module, lam=0.95, **common)[0])
    assert any(g is not None for g in ppo_grads.values())
    for name, grad in a2c_grads.items():
        if grad is None:
            assert ppo_grads[name] is None or not ppo_grads[name].any(), name
        else:
            torch.testing.assert_close(ppo_grads[name], grad, rtol=1e-5, atol=1e-7)


def at_ratio(module, ratio, advantage):
    """A prepared batch whose behaviour log-probabilities make every ratio equal ``ratio``."""
    fragment = collect(module)
    prepared = ppo.prepare(fragment, module)
    with torch.no_grad():
        logp = Categorical(logits=module.policy(prepared.state.obs)).log_prob(prepared.action)
    return prepared._replace(
        logp=logp - math.log(ratio), advantage=torch.full_like(prepared.advantage, float(advantage))
    )


@pytest.mark.parametrize(
    "ratio, advantage, clipped",
    [(1.5, 1.0, True), (1.5, -1.0, False), (0.5, 1.0, False), (0.5, -1.0, True)],
)
def test_clipping(ratio, advantage, clipped):
    module = MLPActor()
    prepared = at_ratio(module, ratio, advantage)
    loss, info = ppo.loss(prepared, module, clip=0.2, value_coef=0.0, normalize_advantages=False)
    bound = 1.2 if ratio > 1 else 0.8
    # The surrogate is the pessimistic (min) of the clipped and unclipped objectives.
    expected = -advantage * (bound if clipped else ratio)
    assert info["policy_loss"] == pytest.approx(expected, rel=1e-5)
    assert info["clipfrac"] == 1.0
    assert info["approx_kl"] == pytest.approx(ratio - 1 - math.log(ratio), rel=1e-4)
    grads = gradients(module, loss)
    if clipped:
        assert not has_gradient(grads, "policy.")
    else:
        logp = Categorical(logits=module.policy(prepared.state.obs)).log_prob(prepared.action)
        expected_grads = gradients(module, -(advantage * ratio * logp).mean())
        for name in expected_grads:
            if name.startswith("policy."):
                torch.testing.assert_close(grads[name], expected_grads[name])


def test_advantages_normalised_per_minibatch():
    fragment, module = lagged(sticky=True)  # ratios != 1, so the loss depends on the scale
    prepared = ppo.prepare(fragment, module)
    minibatch = next(ppo.minibatches(prepared, 2, generator=torch.Generator().manual_seed(0)))
    assert not minibatch.valid.all()
    _, info = ppo.loss(minibatch, module)
    adv, valid = minibatch.advantage[minibatch.valid], minibatch.valid
    normalised = torch.zeros_like(minibatch.advantage)
    normalised[valid] = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
    _, manual = ppo.loss(minibatch._replace(advantage=normalised), module, normalize_advantages=False)
    assert info["policy_loss"] == pytest.approx(manual["policy_loss"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("padded", [False, True])
def test_single_valid_sample_is_not_normalised_to_zero(padded):
    # A minibatch with one valid row (alone, or beside padding): standardising its advantage would
    # give 0 and no policy gradient; the loss uses the raw advantage instead.
    module = MLPActor()
    prepared = ppo.prepare(collect(module), module)  # fresh module: every ratio is 1, nothing clipped
    rows = list(ppo.minibatches(prepared, prepared.valid.numel(), generator=torch.Generator().manual_seed(0)))
    single = next(mb for mb in rows if mb.valid.all() and mb.advantage.abs().min() > 1e-3)
    if padded:  # two rows, the second invalid
        other = next(mb for mb in rows if mb is not single)
        single = optree.tree_map(lambda a, b: torch.cat([a, b], 1), single, other)
        single = single._replace(valid=torch.tensor([[True, False]]))
    loss, info = ppo.loss(single, module, value_coef=0.0)
    grads = gradients(module, loss)
    assert has_gradient(grads, "policy.")
    advantage = float(single.advantage[0, 0])
    assert info["policy_loss"] == pytest.approx(-advantage, rel=1e-5)  # -A * ratio, ratio 1
    logp = Categorical(logits=module.policy(single.state.obs[:, :1])).log_prob(single.action[:, :1])
    expected = gradients(module, -(advantage * (logp - single.logp[:, :1]).exp()).sum())
    for name, grad in expected.items():
        if name.startswith("policy."):
            torch.testing.assert_close(grads[name], grad)


def test_value_clipping_is_off_by_default_and_clips_when_asked():
    module = MLPActor()
    prepared = ppo.prepare(collect(module), module)
    with torch.no_grad():
        value = module.value(prepared.state.obs).squeeze(-1)
    old = value + torch.linspace(-1, 1, value.numel()).reshape(value.shape)
    prepared = prepared._replace(value=old)
    _, plain = ppo.loss(prepared, module)
    assert plain["value_loss"] == pytest.approx(float(0.5 * ((value - prepared.target) ** 2).mean()), rel=1e-5)
    _, clipped = ppo.loss(prepared, module, value_clip=0.1)
    moved = old + (value - old).clamp(-0.1, 0.1)
    expected = 0.5 * torch.max((value - prepared.target) ** 2, (moved - prepared.target) ** 2).mean()
    assert clipped["value_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert clipped["value_loss"] > plain["value_loss"]


@pytest.mark.parametrize("n_minibatches", [1, 3, 40])
def test_flat_minibatches_use_every_sample_once(n_minibatches):
    module = MLPActor()
    prepared = ppo.prepare(collect(module), module)
    tagged = prepared._replace(advantage=torch.arange(40.0).reshape(8, 5))
    batches = list(ppo.minibatches(tagged, n_minibatches, generator=torch.Generator().manual_seed(1)))
    assert len(batches) == n_minibatches
    sizes = [b.advantage.shape[1] for b in batches]
    assert max(sizes) - min(sizes) <= 1
    seen = torch.cat([b.advantage.reshape(-1) for b in batches])
    assert sorted(seen.tolist()) == list(range(40))
    for b in batches:  # each row keeps its own data together
        assert b.advantage.shape[0] == 1 and b.hx == ()
        t, e = (b.advantage[0] // 5).long(), (b.advantage[0] % 5).long()
        assert torch.equal(b.state.obs[0], prepared.state.obs[t, e])
        assert torch.equal(b.action[0], prepared.action[t, e])
        assert torch.equal(b.target[0], prepared.target[t, e])


def test_sequence_minibatches_keep_columns_and_their_hx():
    module = GRUActor()
    prepared = ppo.prepare(collect(module, skip=1), module)
    batches = list(ppo.minibatches(prepared, 2, generator=torch.Generator().manual_seed(0)))
    columns = []
    for b in batches:
        assert b.advantage.shape[0] == 8
        for i in range(b.advantage.shape[1]):
            column = [c for c in range(5) if torch.equal(prepared.advantage[:, c], b.advantage[:, i])]
            assert len(column) == 1
            columns.append(column[0])
            assert torch.equal(b.hx[:, i], prepared.hx[:, column[0]])
            assert torch.equal(b.state.obs[:, i], prepared.state.obs[:, column[0]])
    assert sorted(columns) == list(range(5))


@pytest.mark.parametrize("make, skip, sticky", [(MLPActor, 0, True), (GRUActor, 1, False)])
def test_minibatch_losses_add_up_to_the_full_batch(make, skip, sticky):
    module = make()
    prepared = ppo.prepare(collect(module, skip=skip, sticky=sticky), module)
    options = dict(normalize_advantages=False, value_coef=1.0)
    _, full = ppo.loss(prepared, module, **options)
    total = {"policy_loss": 0.0, "value_loss": 0.0}
    n = float(prepared.valid.sum())
    for minibatch in ppo.minibatches(prepared, 3, generator=torch.Generator().manual_seed(2)):
        _, info = ppo.loss(minibatch, module, **options)
        for key in total:
            total[key] += info[key] * float(minibatch.valid.sum()) / n
    for key in total:
        assert total[key] == pytest.approx(full[key], rel=1e-5, abs=1e-7)


def test_minibatch_errors():
    module = GRUActor()
    prepared = ppo.prepare(collect(module), module)
    with pytest.raises(ValueError, match="flat minibatches lose the recurrent state"):
        next(ppo.minibatches(prepared, 2, sequences=False))
    with pytest.raises(ValueError, match=r"`n_minibatches` must be an int in \[1, 5\] \(columns\), got 6"):
        next(ppo.minibatches(prepared, 6))


def test_prepare_uses_recorded_behaviour_current_values_and_no_grad():
    fragment, module = lagged()
    prepared = ppo.prepare(fragment, module)
    with torch.no_grad():
        torch.testing.assert_close(prepared.value, module.value(fragment.state.obs[:-1]).squeeze(-1))
    assert not any(x.requires_grad for x in (prepared.logp, prepared.value, prepared.advantage, prepared.target))
    assert torch.equal(prepared.logp, fragment.actor["logp"][:-1])
    without_logp = fragment._replace(actor={k: v for k, v in fragment.actor.items() if k != "logp"})
    torch.testing.assert_close(ppo.prepare(without_logp, module).logp, prepared.logp)
    _, info = ppo.loss(prepared, module)
    assert info["approx_kl"] > 1e-4


def test_value_head_only_trained_by_value_loss():
    module = MLPActor()
    fragment = collect(module)
    grads = gradients(module, ppo.loss(fragment, module, value_coef=0.0, entropy_coef=0.01)[0])
    assert has_gradient(grads, "policy.") and not has_gradient(grads, "value.")


def test_stateless():
    module = GRUActor()
    fragment = collect(module, skip=1, sticky=True)
    prepared = ppo.prepare(fragment, module)
    assert_stateless(lambda: ppo.loss(prepared, module, entropy_coef=0.01), module, prepared, fragment)
    assert tree_equal(ppo.prepare(fragment, module), prepared)


def test_padding_is_masked():
    module = MLPActor()
    fragment = collect(module, sticky=True)
    loss, _ = ppo.loss(fragment, module, entropy_coef=0.1)
    torch.testing.assert_close(ppo.loss(perturb_padding(fragment), module, entropy_coef=0.1)[0], loss)


def test_explained_variance():
    module = MLPActor()
    prepared = ppo.prepare(collect(module), module)
    _, info = ppo.loss(prepared._replace(target=prepared.value * 3 + 1), module)
    assert info["explained_variance"] < 0.9
    _, info = ppo.loss(prepared._replace(target=prepared.value + 1), module)
    assert info["explained_variance"] == pytest.approx(1.0, abs=1e-5)


def test_custom_distribution():
    module = GaussianActor()
    fragment = collect(module, n_actions=None, act_dim=2)
    prepared = ppo.prepare(fragment, module)
    minibatch = next(ppo.minibatches(prepared, 2))
    grads = gradients(module, ppo.loss(minibatch, module, entropy_coef=0.01)[0])
    assert has_gradient(grads, "log_std") and has_gradient(grads, "mean.")


def test_argument_errors():
    module = MLPActor()
    fragment = collect(module)
    with pytest.raises(ValueError, match="`clip` must be > 0, got 0"):
        ppo.loss(fragment, module, clip=0)
    with pytest.raises(ValueError, match="must be a Prepared minibatch or a Fragment, got dict"):
        ppo.loss({}, module)


class PolicyOnly(MLPActor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return act, (), {"logits": self.policy(obs)}


class ValueOnly(MLPActor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return act, (), {"value": self.value(obs).squeeze(-1)}


def test_missing_value_is_an_actor_contract_error_and_missing_policy_a_value_error():
    fragment = collect(MLPActor())
    # as documented: a TypeError (ActorContractError), which `except ValueError` does not catch
    assert issubclass(ActorContractError, TypeError) and not issubclass(ActorContractError, ValueError)
    missing = r"needs the module's info\['value'\] \(keys: \['logits'\]\)"
    with pytest.raises(ActorContractError, match="ppo.prepare " + missing):
        ppo.prepare(fragment, PolicyOnly())
    with pytest.raises(ActorContractError, match="ppo.prepare " + missing):
        ppo.loss(fragment, PolicyOnly())
    minibatch = next(ppo.minibatches(ppo.prepare(fragment, MLPActor()), 2))
    with pytest.raises(ActorContractError, match="ppo.loss " + missing):
        ppo.loss(minibatch, PolicyOnly())
    with pytest.raises(ValueError, match="has no `distribution\\(info\\)` method and its info has no 'logits'"):
        ppo.loss(minibatch, ValueOnly())


def test_learns_the_rewarded_action():
    def loss_fn(fragment, module):
        prepared = ppo.prepare(fragment, module, gamma=0.9)
        return sum(ppo.loss(mb, module)[0] for mb in ppo.minibatches(prepared, 2))

    before, after = rewarded_action_probability(loss_fn)
    assert before < 0.4 and after > 0.8
