"""Train A2C on CartPole-v1 with a double-buffered worker: the README's main job.

Run: ``python -m zoo.demo``. A worker process steps the envs (``single.rollout``) while this
process computes ``learners.a2c.loss`` on the previous fragment; every ``next()`` publishes the
updated weights to the worker. Prints the mean return of the episodes finished in each window and
a greedy evaluation at the end. On a 2-core laptop CPU it takes about a minute.
"""

import argparse
import itertools
import time

import gymnasium
import torch

import rollout
from learners import a2c
from rollout import single
from zoo.actors import CategoricalMLP


def make_env():
    return gymnasium.make("CartPole-v1")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=32)
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small nets: extra intra-op threads only fight the envs for cores
    torch.manual_seed(args.seed)
    actor = CategoricalMLP(4, 2)
    optim = torch.optim.Adam(actor.parameters(), lr=args.lr)
    returns, steps, start = [], 0, time.perf_counter()
    with single.rollout(make_env, actor, args.n_steps, args.n_envs, seed=args.seed) as feed:
        for update, batch in enumerate(itertools.islice(feed, args.updates), 1):
            loss, info = a2c.loss(batch, actor, gamma=0.99, lam=0.95, entropy_coef=0.01, correction="truncated_is")
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(actor.parameters(), 0.5)
            optim.step()
            returns += rollout.episodes(batch).returns.tolist()
            steps += args.n_steps * args.n_envs
            if update % 50 == 0:
                mean = sum(returns) / max(1, len(returns))
                print(f"update {update:4d}  env steps {steps:7d}  episodes {len(returns):4d}  mean return {mean:6.1f}  "
                      f"entropy {info['entropy']:.2f}  {steps / (time.perf_counter() - start):,.0f} steps/s", flush=True)
                returns = []
    result = rollout.evaluate(make_env, actor, 10, n_envs=2, seed=args.seed + 1)
    print(f"greedy evaluation over 10 episodes: mean return {result.returns.mean():.1f} (max 500)")


if __name__ == "__main__":
    main()
