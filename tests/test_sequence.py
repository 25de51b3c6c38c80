"""rollout.unroll against the row-by-row loop: outputs, final state and gradients."""

import pytest
import torch

import rollout

N_SEQ, B, IN, HIDDEN = 9, 6, 3, 5


def fin_pattern(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    fin = torch.zeros(N_SEQ, B, dtype=torch.bool)
    if name == "row 0 only":
        fin[0] = True
    elif name == "continuing":
        pass
    elif name == "resets anywhere":
        fin = torch.rand(N_SEQ, B, generator=g) < 0.3
    elif name == "every row":
        fin[:] = True
    elif name == "sticky":  # column j ends at row 1 + j (or never): fin on every row after
        fin[0, ::2] = True
        for j in range(B - 1):
            fin[1 + j :, j] = True
    elif name == "one-row episodes then long ones":
        fin[[1, 2, 3], 0] = True  # two one-row segments, then a long episode from row 3
        fin[4, 1] = True
        fin[N_SEQ - 1, 2] = True  # a one-row segment at the last row
    return fin


PATTERNS = ["row 0 only", "continuing", "resets anywhere", "every row", "sticky", "one-row episodes then long ones"]


def loop(rnn, x, hx, fin):
    """The reference: one call per row, the state zeroed before rows with fin."""
    lstm = isinstance(rnn, torch.nn.LSTM)
    state, outputs = hx, []
    for t in range(x.shape[0]):
        keep = ~fin[t].unsqueeze(-1)
        state = (state[0] * keep, state[1] * keep) if lstm else state * keep
        out, state = rnn(x[t : t + 1], state)
        outputs.append(out)
    return torch.cat(outputs), state


def make(kind, layers):
    torch.manual_seed(0)
    Module = torch.nn.GRU if kind == "gru" else torch.nn.LSTM
    rnn = Module(IN, HIDDEN, num_layers=layers).double()
    x = torch.randn(N_SEQ, B, IN, dtype=torch.float64, requires_grad=True)
    shape = (layers, B, HIDDEN)
    if kind == "gru":
        hx = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    else:
        hx = tuple(torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(2))
    return rnn, x, hx


def leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_unroll_matches_the_row_loop_in_values_and_gradients(kind, layers, pattern):
    fin = fin_pattern(pattern)
    rnn, x, hx = make(kind, layers)
    results = []
    for fn in (loop, rollout.unroll):
        rnn.zero_grad()
        inputs = [x, *leaves(hx)]
        for t in inputs:
            t.grad = None
        out, state = fn(rnn, x, hx, fin)
        # a loss reading every output and the final state
        loss = (out * torch.linspace(-1, 1, HIDDEN, dtype=out.dtype)).sum() + sum(s.pow(2).sum() for s in leaves(state))
        loss.backward()
        grads = [p.grad.clone() for p in rnn.parameters()] + [t.grad.clone() for t in inputs]
        results.append((out.detach(), [s.detach() for s in leaves(state)], grads))
    (out_a, state_a, grads_a), (out_b, state_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a)
    for a, b in zip(state_a, state_b):
        torch.testing.assert_close(b, a)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("pattern", ["sticky", "resets anywhere", "continuing"])
def test_unroll_uses_few_fused_calls(pattern):
    fin = fin_pattern(pattern)
    rnn, x, hx = make("lstm", 1)
    calls = []
    rnn.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    rollout.unroll(rnn, x, hx, fin)
    starts = (fin[1:] & ~torch.cat([fin[2:] & fin[1:-1], fin[-1:]])).any(1).sum().item()
    if pattern == "sticky":
        assert calls == [N_SEQ, 1]  # the rows before the ends, densely; every frozen row in one call
    elif pattern == "continuing":
        assert calls == [N_SEQ]
    else:
        assert len(calls) <= 2 + starts


def test_a_collector_step_is_one_call_and_zeroes_the_state_at_fin():
    rnn, x, hx = make("gru", 1)
    fin = torch.tensor([[True, False, True, False, False, False]])
    calls = []
    rnn.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    out, state = rollout.unroll(rnn, x[:1], hx, fin)
    assert len(calls) == 1
    expected, _ = rnn(x[:1], hx * ~fin[0].unsqueeze(-1))
    torch.testing.assert_close(out, expected)


def test_bad_arguments_are_named():
    rnn, x, hx = make("gru", 1)
    fin = torch.zeros(N_SEQ, B, dtype=torch.bool)
    with pytest.raises(ValueError, match="GRU or torch.nn.LSTM"):
        rollout.unroll(torch.nn.GRUCell(IN, HIDDEN), x, hx, fin)
    with pytest.raises(ValueError, match="batch_first"):
        rollout.unroll(torch.nn.GRU(IN, HIDDEN, batch_first=True).double(), x, hx, fin)
    with pytest.raises(ValueError, match="fin: expected a bool tensor"):
        rollout.unroll(rnn, x, hx, fin.float())
    with pytest.raises(ValueError, match=r"hx: expected a tensor of shape \(1, 6, 5\)"):
        rollout.unroll(rnn, x, hx[:, :3], fin)
    lstm, _, (h, c) = make("lstm", 1)
    with pytest.raises(ValueError, match=r"hx: expected \(h, c\)"):
        rollout.unroll(lstm, x, h, fin)


def test_the_readme_recurrent_actor_replays_what_it_collected():
    # the README's example, run as written: collect sticky fragments, then replay each one from
    # Fragment.hx in one step over all its rows; the logits are the collector's, row for row
    import pathlib
    import re

    import gymnasium

    from rollout import same

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "class GRUActor" in block)
    namespace = {"rollout": rollout, "torch": torch}
    exec(code, namespace)
    torch.manual_seed(0)
    actor = namespace["GRUActor"](4, 2, hidden=16)
    make = lambda: gymnasium.make("CartPole-v1")  # noqa: E731
    ends = 0
    with same.rollout(make, actor, n_steps=32, n_envs=4, sticky=True, seed=0) as feed:
        for _ in range(3):
            f = next(feed).clone()
            s = f.state
            _, _, info = actor.step(s.stepno, s.obs, s.act, s.rew, s.fin, hx=f.hx, virtual=True)
            torch.testing.assert_close(info["logits"], f.actor["logits"], rtol=1e-5, atol=1e-5)
            ends += int(s.fin[1:].sum())
    assert ends > 0  # episodes ended inside fragments: the resets were replayed
