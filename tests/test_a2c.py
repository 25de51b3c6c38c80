"""learners.a2c: the loss against a hand computation, corrections, gradients, statelessness."""

import pytest
import torch

from learners import a2c
from rollout.errors import ActorContractError
from tests.learners_fixtures import (
    assert_stateless,
    naive_policy_terms,
    GRUActor,
    GaussianActor,
    MLPActor,
    ToyCollector,
    collect,
    gradients,
    has_gradient,
    lagged,
    naive_next_value,
    naive_valid,
    perturb_padding,
    rewarded_action_probability,
)
from tests.test_returns import naive_gae, naive_vtrace


def expected_terms(fragment, module, gamma, lam, behaviour=None, correction=None, rho_bar=1.0, c_bar=1.0):
    """policy_loss, value_loss, entropy of A2C computed naively."""
    state = fragment.state
    logp, entropy, value = naive_policy_terms(fragment, module)
    next_value = naive_next_value(fragment, value).double()
    args = (state.rew[1:].double(), value[:-1].double(), next_value)
    masks = (state.fin[1:], state.terminated[1:])
    if correction == "vtrace":
        log_rho = (logp - behaviour).double()
        advantage, target = naive_vtrace(*args, log_rho, *masks, gamma, rho_bar, c_bar, lam)
    else:
        advantage = naive_gae(*args, *masks, gamma, lam)
        target = advantage + value[:-1].double()
        if correction == "truncated_is":
            advantage = advantage * (logp - behaviour).exp().clamp(max=rho_bar).double()
    weight = naive_valid(fragment).double()
    n = weight.sum()
    policy_loss = -(weight * logp.double() * advantage).sum() / n
    value_loss = 0.5 * (weight * (value[:-1].double() - target) ** 2).sum() / n
    return float(policy_loss), float(value_loss), float((weight * entropy.double()).sum() / n)


@pytest.mark.parametrize("lam", [0.0, 0.9, 1.0])
def test_loss_matches_hand_computation(lam):
    module = MLPActor()
    fragment = collect(module, sticky=True)
    loss, info = a2c.loss(fragment, module, gamma=0.9, lam=lam, value_coef=0.5, entropy_coef=0.1)
    policy_loss, value_loss, entropy = expected_terms(fragment, module, 0.9, lam)
    assert info["policy_loss"] == pytest.approx(policy_loss, rel=1e-5)
    assert info["value_loss"] == pytest.approx(value_loss, rel=1e-5)
    assert info["entropy"] == pytest.approx(entropy, rel=1e-5)
    assert loss.item() == pytest.approx(policy_loss + 0.5 * value_loss - 0.1 * entropy, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("correction", ["truncated_is", "vtrace"])
def test_corrections_match_hand_computation(correction):
    fragment, module = lagged(moved="policy.")
    _, info = a2c.loss(fragment, module, gamma=0.9, lam=0.95, correction=correction, rho_bar=1.2, c_bar=0.9)
    behaviour = fragment.actor["logp"][:-1]
    policy_loss, value_loss, _ = expected_terms(fragment, module, 0.9, 0.95, behaviour, correction, 1.2, 0.9)
    assert info["policy_loss"] == pytest.approx(policy_loss, rel=1e-5)
    assert info["value_loss"] == pytest.approx(value_loss, rel=1e-5)
    assert info["rho_mean"] != pytest.approx(1.0)


def test_corrections_agree_on_policy():
    """On-policy with lam=1 the V-trace advantage is the n-step advantage, and IS weights are 1."""
    module = MLPActor()
    fragment = collect(module)
    losses = [a2c.loss(fragment, module, lam=1.0, correction=c)[1] for c in a2c.CORRECTIONS]
    for info in losses[1:]:
        assert info["policy_loss"] == pytest.approx(losses[0]["policy_loss"], rel=1e-4)
        assert info["value_loss"] == pytest.approx(losses[0]["value_loss"], rel=1e-4)
        assert info["rho_mean"] == pytest.approx(1.0)


def test_behaviour_from_recorded_logits_when_no_logp():
    fragment, module = lagged(seed=2, moved="policy.")
    actor = {k: v for k, v in fragment.actor.items() if k != "logp"}
    from_logp = a2c.loss(fragment, module, correction="vtrace")[1]
    from_logits = a2c.loss(fragment._replace(actor=actor), module, correction="vtrace")[1]
    assert from_logits["policy_loss"] == pytest.approx(from_logp["policy_loss"], rel=1e-5)


def test_advantages_and_targets_are_detached():
    module = MLPActor()
    fragment = collect(module)
    policy_only = gradients(module, a2c.loss(fragment, module, value_coef=0.0, entropy_coef=0.0)[0])
    assert has_gradient(policy_only, "policy.") and not has_gradient(policy_only, "value.")
    # The value head's gradient is that of a regression onto constant targets.
    loss, _ = a2c.loss(fragment, module, value_coef=1.0, entropy_coef=0.0, lam=0.9, gamma=0.9)
    grads = gradients(module, loss)
    state = fragment.state
    with torch.no_grad():
        value = module.value(state.obs).squeeze(-1)
        advantage = naive_gae(
            state.rew[1:].double(),
            value[:-1].double(),
            naive_next_value(fragment, value).double(),
            state.fin[1:],
            state.terminated[1:],
            0.9,
            0.9,
        )
        target = (advantage + value[:-1].double()).float()
    manual = 0.5 * ((module.value(state.obs[:-1]).squeeze(-1) - target) ** 2).mean()
    expected = gradients(module, manual)
    for name in expected:
        if name.startswith("value."):
            torch.testing.assert_close(grads[name], expected[name])


def test_stateless():
    fragment, module = lagged(moved="policy.", sticky=True)
    assert_stateless(lambda: a2c.loss(fragment, module, correction="vtrace"), module, fragment)


@pytest.mark.parametrize("correction", a2c.CORRECTIONS)
def test_padding_is_masked(correction):
    fragment, module = lagged(moved="policy.", sticky=True)
    loss, _ = a2c.loss(fragment, module, correction=correction)
    torch.testing.assert_close(a2c.loss(perturb_padding(fragment), module, correction=correction)[0], loss)


def test_recurrent_module_starts_from_batch_hx():
    module = GRUActor()
    collector = ToyCollector(5, module=module, p_end=0.1)
    collector.fragment(6)
    fragment = collector.fragment(6)  # the second one starts mid-episode, from a nonzero state
    assert fragment.hx.abs().sum() > 0
    loss, _ = a2c.loss(fragment, module)
    assert torch.isfinite(loss)
    zeroed = fragment._replace(hx=torch.zeros_like(fragment.hx))
    assert a2c.loss(zeroed, module)[0].item() != pytest.approx(loss.item())


def test_custom_distribution():
    module = GaussianActor()
    fragment = collect(module, n_actions=None, act_dim=2)
    grads = gradients(module, a2c.loss(fragment, module, correction="vtrace")[0])
    assert has_gradient(grads, "log_std") and has_gradient(grads, "mean.")


def test_argument_errors():
    module = MLPActor()
    fragment = collect(module)
    with pytest.raises(ValueError, match=r"`correction` must be one of \(None, 'truncated_is', 'vtrace'\), got 'is'"):
        a2c.loss(fragment, module, correction="is")
    with pytest.raises(ValueError, match="`rho_bar` must be > 0"):
        a2c.loss(fragment, module, correction="vtrace", rho_bar=0.0)


class PolicyOnly(MLPActor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return act, (), {"logits": self.policy(obs)}


class ValueOnly(MLPActor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return act, (), {"value": self.value(obs).squeeze(-1)}


@pytest.mark.parametrize("correction", a2c.CORRECTIONS)
def test_missing_value_is_an_actor_contract_error_and_missing_policy_a_value_error(correction):
    fragment = collect(MLPActor())
    # as documented: a TypeError (ActorContractError), which `except ValueError` does not catch
    assert issubclass(ActorContractError, TypeError) and not issubclass(ActorContractError, ValueError)
    with pytest.raises(ActorContractError, match=r"a2c.loss needs the module's info\['value'\] \(keys: \['logits'\]\)"):
        a2c.loss(fragment, PolicyOnly(), correction=correction)
    with pytest.raises(ValueError, match="has no `distribution\\(info\\)` method and its info has no 'logits'"):
        a2c.loss(fragment, ValueOnly(), correction=correction)


@pytest.mark.parametrize("correction", a2c.CORRECTIONS)
def test_learns_the_rewarded_action(correction):
    before, after = rewarded_action_probability(lambda f, m: a2c.loss(f, m, gamma=0.9, correction=correction)[0])
    assert before < 0.4 and after > 0.8
