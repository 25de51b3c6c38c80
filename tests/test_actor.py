"""The actor contract: signatures at class definition, outputs at the first step."""

import pytest
import torch

import rollout
from rollout import same
from rollout.errors import ActorContractError
from tests.toys import Corridor


def test_wrong_step_signature_is_a_type_error_at_class_definition():
    with pytest.raises(
        TypeError,
        match=r"Bad.step has the wrong signature.*Expected step\(self, stepno, obs, act, rew, fin, /, \*, hx, virtual\)",
    ):

        class Bad(rollout.Actor):
            def step(self, obs, hx):
                pass


def test_missing_keyword_is_named():
    with pytest.raises(ActorContractError, match=r"\['virtual'\]"):

        class Bad(rollout.Actor):
            def step(self, stepno, obs, act, rew, fin, *, hx):
                pass


def test_wrong_reset_signature():
    with pytest.raises(ActorContractError, match="reset"):

        class Bad(rollout.Actor):
            def reset(self, hx):
                pass


def test_good_signatures_are_accepted():
    class Good(rollout.Actor):
        def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
            pass

        def reset(self, hx, at):
            return hx

    class AlsoGood(rollout.Actor):
        def step(self, *inputs, **options):
            pass

    assert Good and AlsoGood


class WrongBatch(rollout.Actor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return torch.zeros((1, 1), dtype=torch.int64), (), {}


class WrongDtype(rollout.Actor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return torch.zeros(stepno.shape, dtype=torch.float32), (), {}


class WrongNesting(rollout.Actor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return {"move": torch.zeros_like(stepno)}, (), {}


class WrongInfo(rollout.Actor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return torch.zeros_like(stepno), (), {"value": torch.zeros(3)}


class NotATuple(rollout.Actor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return torch.zeros_like(stepno)


class ChangingInfo(rollout.Actor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        info = {"value": torch.zeros(stepno.shape)}
        if stepno.max() >= 2:
            info["extra"] = info["value"]
        return torch.zeros_like(stepno), (), info


@pytest.mark.parametrize(
    "actor, envs, message",
    [
        (
            WrongBatch(),
            [Corridor(), Corridor()],
            r"action: expected a tensor of shape \(1, 2\) and dtype torch.int64, found a tensor of shape \(1, 1\)",
        ),
        (WrongDtype(), [Corridor()], r"action: expected .* dtype torch.int64, found .* dtype torch.float32"),
        (WrongNesting(), [Corridor()], r"nested like the action space .* found leaves \[\"\['move'\]\"\]"),
        (
            WrongInfo(),
            [Corridor()],
            r"info\['value'\]: expected a tensor of shape \(1, 1, \.\.\.\), found a tensor of shape \(3,\)",
        ),
        (NotATuple(), [Corridor()], r"must return a tuple \(act, hx, info\)"),
    ],
)
def test_wrong_outputs_are_rejected_at_the_first_step(actor, envs, message):
    with pytest.raises(ActorContractError, match=message):
        same.rollout(envs, actor, 4)


def test_not_an_actor():
    with pytest.raises(ActorContractError, match="rollout.Actor"):
        same.rollout([Corridor()], torch.nn.Linear(1, 1), 4)


def test_info_structure_change_is_an_error():
    with same.rollout([Corridor()], ChangingInfo(), 4) as feed:
        with pytest.raises(
            rollout.errors.ActorContractError,
            match=r"ChangingInfo\.step at row \d+ of the fragment: the actor.s info changed structure",
        ):
            next(feed)


def test_default_reset_zeroes_only_the_given_entries():
    hx = (torch.ones(2, 3, 4), {"c": torch.ones(1, 3)})
    out = rollout.Actor().reset(hx, torch.tensor([1]))
    assert out[0][:, 1].abs().sum() == 0 and out[0][:, [0, 2]].min() == 1
    assert out[1]["c"].tolist() == [[1, 0, 1]]
    assert hx[0].min() == 1  # out of place
