"""Reaching hosts: SSH connections, the agent bundle, agent sessions (call / cast / follow)."""
