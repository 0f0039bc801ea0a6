"""Agents that act in ALE: collection policies now; linear and end-to-end DQN control later."""
