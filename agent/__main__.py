"""Entry point: ``serve`` (the long-lived agent) and ``run-job`` (one durable job).

In the bundle, the zipapp's own ``__main__.py`` calls ``main()``; in a checkout,
``python3 -m agent serve`` does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import BinaryIO, List, Optional

from agent import __version__

_LOG_FORMAT = "%(asctime)s agent[%(process)d] %(levelname)s %(name)s: %(message)s"


def _claim_stdout() -> BinaryIO:
    """Keep the real stdout for protocol messages only, and point fd 1 at stderr.

    A stray print (ours, a library's, a child's inherited fd 1) would corrupt the
    message stream; after this it lands in the log instead.
    """
    sys.stdout.flush()
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol_out


def serve() -> int:
    from agent.calls import Agent
    from agent.protocol import MessageLoop

    out = _claim_stdout()
    logging.getLogger(__name__).info("herd agent %s serving (pid %s)", __version__, os.getpid())
    agent = Agent()
    MessageLoop(agent.dispatch, out).serve(sys.stdin.buffer)
    agent.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="agent", description="herd hypervisor agent")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="answer protocol requests on stdin/stdout")
    job = sub.add_parser("run-job", help="run one journalled job (started by serve)")
    job.add_argument("journal", type=Path, help="the job's journal file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if args.debug else logging.INFO, format=_LOG_FORMAT
    )
    if args.command == "serve":
        return serve()
    # A job's runner is a fresh process per job: it loads what running a job takes,
    # not the protocol and every call the serving agent answers.
    from agent.runner import run_job

    return run_job(args.journal)


if __name__ == "__main__":
    sys.exit(main())
