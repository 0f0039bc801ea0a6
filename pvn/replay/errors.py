"""The one exception type of the data path: a user-visible problem with a replay file or value."""


class ReplayError(ValueError):
    """Bad replay data or arguments. The message names the file (or value) and what is wrong."""
