"""Collect CartPole fragments with ``same.rollout`` and report throughput and episode statistics.

Run: ``python -m zoo.demo``. (The training CLI arrives with its own issue; this exercises the
collector, the fragment layout and ``evaluate``.)
"""

import argparse
import itertools
import time

import gymnasium
import torch

import rollout
from rollout import same
from zoo.actors import CategoricalMLP


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--fragments", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small nets: extra intra-op threads only fight the envs for cores
    torch.manual_seed(args.seed)
    actor = CategoricalMLP(4, 2)
    factory = lambda: gymnasium.make("CartPole-v1")  # noqa: E731
    returns = []
    with same.rollout(factory, actor, args.n_steps, n_envs=args.n_envs, seed=args.seed) as feed:
        start = time.perf_counter()
        for fragment in itertools.islice(feed, args.fragments):
            returns += rollout.episodes(fragment).returns.tolist()
        elapsed = time.perf_counter() - start
    steps = args.fragments * args.n_steps * args.n_envs
    print(f"collected {steps} env steps in {elapsed:.2f} s: {steps / elapsed:,.0f} steps/s")
    print(f"fragment layout: obs {tuple(fragment.state.obs.shape)}, logits {tuple(fragment.actor['logits'].shape)}")
    print(f"{len(returns)} episodes, mean return {sum(returns) / max(1, len(returns)):.1f} (random policy)")
    result = rollout.evaluate(factory, actor, 10, n_envs=2, seed=args.seed)
    print(f"greedy evaluation over 10 episodes: mean return {result.returns.mean():.1f}")


if __name__ == "__main__":
    main()
