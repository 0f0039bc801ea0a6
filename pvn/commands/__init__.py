"""One module per ``pvn`` command: each turns a resolved config into a run (check the config,
set up or resume the run directory, build through :mod:`pvn.builders`, run the core, summarise).

``collect``, ``data``, ``evaluate``, ``pretrain`` and ``report`` import no other command;
``quickstart`` and ``experiment`` compose them (the import contracts in ``pyproject.toml``).
"""
