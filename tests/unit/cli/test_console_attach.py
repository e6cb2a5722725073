"""`herd server console` puts the terminal in raw mode while attached and gives it back
as it was, however the attach ends; a stdin that is no terminal is left alone."""

from __future__ import annotations

import os
import termios

import pytest

from orchestrator.cli.console_attach import raw_terminal


def test_a_terminal_is_raw_while_attached_and_restored_after_an_error() -> None:
    leader, follower = os.openpty()
    try:
        before = termios.tcgetattr(follower)
        assert before[3] & termios.ICANON  # a fresh pty starts in canonical (cooked) mode
        with pytest.raises(RuntimeError), raw_terminal(follower):
            assert not termios.tcgetattr(follower)[3] & (termios.ICANON | termios.ECHO)
            raise RuntimeError("connection lost")
        assert termios.tcgetattr(follower) == before
    finally:
        os.close(leader)
        os.close(follower)


def test_a_stdin_that_is_no_terminal_is_not_touched() -> None:
    read_end, write_end = os.pipe()
    try:
        with raw_terminal(read_end):
            os.write(write_end, b"x")
        assert os.read(read_end, 1) == b"x"
    finally:
        os.close(read_end)
        os.close(write_end)
