"""Ready actors and environments, and the training examples."""

__all__: list = []
