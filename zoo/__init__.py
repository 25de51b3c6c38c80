"""Ready actors and environments, and the training command line ``python -m zoo``.

- :mod:`zoo.actors`: discrete MLP and GRU actor-critics, the SAC actor and critics, the Atari conv net;
- :mod:`zoo.normalize`: running observation (and reward) statistics owned by an actor;
- :mod:`zoo.envs`: small envs registered with gymnasium under ``zoo/`` (importing :mod:`zoo` registers them);
- :mod:`zoo.train`: the training loop of ``python -m zoo train``, with :mod:`zoo.learning` (the
  update rules), :mod:`zoo.presets` (hyperparameters per algorithm and env) and :mod:`zoo.run` (the run folder).
"""

from . import envs

__all__ = ["envs"]
