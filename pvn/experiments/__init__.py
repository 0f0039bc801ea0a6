"""The experiment engine behind ``pvn experiment``: the plan (:mod:`.plan`: the config and
its stage graph), the store of ``out`` (:mod:`.store`: commands, times, locks, runners), the
launchers that run stages (:mod:`.launchers`) and the readings (:mod:`.summary`: ETA, status,
report)."""
