"""One exception hierarchy for the whole orchestrator.

Everything an operator can cause or fix is a ``HerdError``; the CLI turns it into a
one-line message and the exit code named here, and only there. Anything else that
escapes is a bug and is reported as one.
"""

from __future__ import annotations


class HerdError(Exception):
    """An error an operator can act on; its message is shown as is."""

    exit_code = 1


class NotFound(HerdError):
    exit_code = 3


class Conflict(HerdError):
    """The request clashes with existing state (duplicate name, instance in use...)."""

    exit_code = 4


class InvalidInput(HerdError):
    exit_code = 2


class NoValidHost(HerdError):
    exit_code = 5


class HostUnreachable(HerdError):
    """SSH to the host failed, timed out, or the agent did not answer."""

    exit_code = 6


class HostKeyNotTrusted(HostUnreachable):
    """The host's SSH key is unknown or changed; we never accept it silently."""


class HostCredentialsError(HostUnreachable):
    """herd cannot log in to the host with what it was given: its SSH key file is missing,
    unreadable, malformed or protected by a passphrase, or the host refused the login.
    A ``HostUnreachable``, so it fails that host's work and no one else's."""


class SshConfigError(HostUnreachable):
    """The OpenSSH client config that says how to reach a host (``~/.ssh/config`` or the
    inventory's ``ssh.config``) cannot be used: a bad line, an unreadable file, a
    ProxyJump loop. Only the hosts whose route it decides fail."""


class AgentError(HerdError):
    """The agent answered, and the answer was an error (libvirt said no, disk full...)."""

    exit_code = 7


class LabError(HerdError):
    exit_code = 8


class DatabaseUnavailable(HerdError):
    """herd's database cannot be reached or opened, or went away during the command:
    no server at the address, no such database, a login refused, a SQLite file that
    cannot be created or opened. Its transaction, if any, was rolled back."""

    exit_code = 9
