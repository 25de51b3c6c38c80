"""Rollout engine: step batches of gymnasium environments with an actor into nested tensors."""

from . import errors
from .actor import Actor
from .fragment import Episodes, Final, Fragment, State, clone, episodes
from . import multi, same, single, sync
from .evaluate import Evaluation, evaluate

__all__ = ["Actor", "Fragment", "State", "Final", "Episodes", "episodes", "clone", "errors", "same", "single", "multi", "sync", "evaluate", "Evaluation"]
