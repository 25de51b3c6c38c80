"""Stateless losses and return estimators that consume fragments yielded by :mod:`rollout`."""

__all__: list = []
