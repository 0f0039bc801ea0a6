"""The exception type of the environment layer."""


class EnvError(ValueError):
    """A bad environment request (unknown game, backend or protocol); the message says which."""
