"""herd's orchestrator: API, conductor, scheduler and state for a fleet of libvirt hosts."""

__version__ = "0.1.0"
