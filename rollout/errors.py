"""Exception types raised by the rollout engine.

Every error a user can cause derives from :class:`RolloutError`, and also from the builtin type a
Python user would expect (``TypeError`` for a broken contract, ``ValueError`` for bad values), so
``except ValueError`` keeps working.
"""

__all__ = [
    "RolloutError",
    "ConfigurationError",
    "ActorContractError",
    "EnvError",
    "StructureError",
    "WorkerError",
]


class RolloutError(Exception):
    """Base class of every error raised by :mod:`rollout`."""


class ConfigurationError(RolloutError, ValueError):
    """An argument of a collector or helper is invalid (raised before any work starts)."""


class ActorContractError(RolloutError, TypeError):
    """An actor breaks the contract of :class:`rollout.Actor` (signature or outputs)."""


class EnvError(RolloutError, ValueError):
    """An environment (or its factory) produced something that does not match its spaces."""


class StructureError(EnvError):
    """The nesting of observations, actions or infos changed between steps."""


class WorkerError(RolloutError, RuntimeError):
    """A worker process failed; the message carries the worker's traceback."""
