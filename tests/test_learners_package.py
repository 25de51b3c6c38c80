"""The learners package: public names and the import direction."""

import subprocess
import sys
from pathlib import Path

import learners


def test_public_names():
    for name in learners.__all__:
        assert hasattr(learners, name), name
    for module in (learners.returns, learners.reinforce, learners.a2c, learners.ppo, learners.sac, learners.replay):
        assert module.__doc__ and module.__all__
        for name in module.__all__:
            assert getattr(module, name).__doc__, f"{module.__name__}.{name} has no docstring"


def test_rollout_does_not_import_learners():
    code = "import sys, rollout; assert not any(m.startswith('learners') for m in sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
