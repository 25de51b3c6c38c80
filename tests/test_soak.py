"""Memory soak: the learner's PSS stays flat over a long run of ``multi`` 2x8 with an A2C step per batch.

The run is the training CLI's A2C preset on CartPole (``python -m zoo train a2c --env CartPole-v1``:
``multi`` with 2 workers of 8 envs, an A2C update per batch, evaluation, logging and ``curve.png``
redrawn at every evaluation), where the learner's PSS used to grow: every redraw left a matplotlib
figure, with its native Agg pixel buffer, in reference cycles that only Python's rare full
collection freed (+35-45 MiB per 100 s, about 1.15x here; fixed by ``zoo.run.Curve``).
"""

import pytest

from benchmarks import soak

# 100 s after a 10 s warm-up: the old growth passed 10% after about 70 s on this machine; the whole
# test takes about 2 minutes, within the suite's 10 minutes on 2 cores. benchmarks/soak.py --zoo runs
# the 3-minute soak.
SECONDS = 100.0
LIMIT = 1.10  # other processes mapping the same torch libraries move our file-backed PSS by a few %


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_learners_pss_stays_within_10_percent_of_its_first_sample(clean):
    result = soak.zoo_soak(SECONDS)
    samples = result["samples"]
    assert samples[-1]["t_s"] >= SECONDS and len(samples) >= SECONDS / 3  # it ran, and was sampled throughout
    assert result["max_ratio"] <= LIMIT, soak.table(result)
