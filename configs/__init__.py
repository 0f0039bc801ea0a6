"""The Hydra config tree of the ``pvn`` CLI (a package, so it ships in the wheel)."""
