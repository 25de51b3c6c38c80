"""learners.reinforce: the loss against a hand computation, gradients, masking, statelessness."""

import pytest
import torch

from learners import reinforce
from rollout.errors import ActorContractError
from tests.learners_fixtures import (
    assert_stateless,
    naive_policy_terms,
    MLPActor,
    collect,
    gradients,
    has_gradient,
    naive_next_value,
    naive_valid,
    perturb_padding,
    rewarded_action_probability,
)
from tests.test_returns import naive_discounted


@pytest.mark.parametrize("baseline", [True, False])
def test_loss_matches_hand_computation(baseline):
    module = MLPActor()
    fragment = collect(module, sticky=True)
    loss, info = reinforce.loss(fragment, module, gamma=0.9, baseline=baseline, value_coef=0.5, entropy_coef=0.1)

    state = fragment.state
    logp, entropy, value = naive_policy_terms(fragment, module)
    next_value = naive_next_value(fragment, value)
    returns = naive_discounted(
        state.rew[1:].double(), next_value.double(), state.fin[1:], state.terminated[1:], 0.9
    ).float()
    weight = naive_valid(fragment).float()
    n = weight.sum()
    advantage = returns - value[:-1] if baseline else returns
    policy_loss = -(weight * logp * advantage).sum() / n
    value_loss = 0.5 * (weight * (value[:-1] - returns) ** 2).sum() / n if baseline else torch.tensor(0.0)
    mean_entropy = (weight * entropy).sum() / n
    assert info["n_samples"] == n
    assert info["policy_loss"] == pytest.approx(float(policy_loss), rel=1e-5)
    assert info["value_loss"] == pytest.approx(float(value_loss), rel=1e-5)
    assert info["entropy"] == pytest.approx(float(mean_entropy), rel=1e-5)
    assert loss.item() == pytest.approx(float(policy_loss + 0.5 * value_loss - 0.1 * mean_entropy), rel=1e-5, abs=1e-6)


def test_whole_episode_returns_only_weight_finished_episodes():
    module = MLPActor()
    fragment = collect(module, seed=3)
    _, info = reinforce.loss(fragment, module, gamma=0.9, bootstrap=False, baseline=False)
    fin, state = fragment.state.fin[1:], fragment.state
    finished = torch.stack([fin[t:].any(0) for t in range(fin.shape[0])])
    assert 0 < finished.sum() < finished.numel()
    assert info["n_samples"] == float((finished & naive_valid(fragment)).sum())
    no_values = torch.zeros(8, 5, dtype=torch.float64)
    returns = naive_discounted(state.rew[1:].double(), no_values, fin, state.terminated[1:], 0.9)
    assert info["return_mean"] == pytest.approx(float(returns[finished].mean()), rel=1e-5)


def test_baseline_is_detached_and_heads_get_their_gradients():
    module = MLPActor()
    fragment = collect(module)
    policy_only = gradients(module, reinforce.loss(fragment, module, value_coef=0.0)[0])
    assert has_gradient(policy_only, "policy.") and not has_gradient(policy_only, "value.")
    both = gradients(module, reinforce.loss(fragment, module, value_coef=0.5)[0])
    assert has_gradient(both, "policy.") and has_gradient(both, "value.")
    # Bootstrap values are detached too: with the baseline off, the value head gets nothing.
    no_baseline = gradients(module, reinforce.loss(fragment, module, baseline=False)[0])
    assert not has_gradient(no_baseline, "value.")


def test_stateless():
    module = MLPActor()
    fragment = collect(module, sticky=True)
    assert_stateless(lambda: reinforce.loss(fragment, module, entropy_coef=0.01), module, fragment)


def test_padding_is_masked():
    module = MLPActor()
    fragment = collect(module, sticky=True)
    loss, _ = reinforce.loss(fragment, module, entropy_coef=0.1)
    perturbed, _ = reinforce.loss(perturb_padding(fragment), module, entropy_coef=0.1)
    torch.testing.assert_close(perturbed, loss)


class PolicyOnly(MLPActor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return act, (), {"logits": self.policy(obs)}


def test_needs_values_unless_told_otherwise():
    module = PolicyOnly()
    fragment = collect(MLPActor())
    # as documented: a TypeError (ActorContractError), which `except ValueError` does not catch
    assert issubclass(ActorContractError, TypeError) and not issubclass(ActorContractError, ValueError)
    for bootstrap, baseline in ((True, False), (False, True)):
        with pytest.raises(ActorContractError, match=r"needs the module's info\['value'\]"):
            reinforce.loss(fragment, module, bootstrap=bootstrap, baseline=baseline)
    with pytest.raises(ActorContractError, match=r"needs the module's info\['value'\] \(keys: \['logits'\]\)"):
        reinforce.loss(fragment, module)
    loss, info = reinforce.loss(fragment, module, bootstrap=False, baseline=False)
    assert torch.isfinite(loss) and info["value_loss"] == 0.0


def test_negative_coefficient_is_an_error():
    module = MLPActor()
    with pytest.raises(ValueError, match="`entropy_coef` must be >= 0, got -1"):
        reinforce.loss(collect(module), module, entropy_coef=-1)


def test_learns_the_rewarded_action():
    before, after = rewarded_action_probability(lambda f, m: reinforce.loss(f, m, gamma=0.9)[0])
    assert before < 0.4 and after > 0.8
