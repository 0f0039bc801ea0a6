"""Agents that act in ALE: acting policies, the DQN rule (linear and end to end), and the online
control loop (:mod:`agents.control`)."""
