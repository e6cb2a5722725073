"""`herd keypair ...`: SSH keys for guests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.api import keypairs
from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import err, out, print_json, table
from orchestrator.cli.states import age
from orchestrator.db.models import KeyPair
from orchestrator.errors import HerdError, InvalidInput
from orchestrator.files import os_reason, read_limited

app = typer.Typer(help="Key pairs: SSH public keys given to guests.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _key_dict(key: KeyPair) -> dict[str, str]:
    return {"name": key.name, "fingerprint": key.fingerprint, "public_key": key.public_key}


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Key pair name.")],
    private_key: Annotated[
        Path | None,
        typer.Option("--private-key", help="Write the private key here (a new file, mode 0600)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate an Ed25519 key pair; herd keeps the public key, you get the private one."""
    delivery: keypairs.PrivateKeyDelivery = (
        keypairs.PrivateKeyFile(private_key) if private_key is not None else _Printed(as_json)
    )

    async def main() -> keypairs.NewKeyPair:
        async with herd() as h:
            return await keypairs.create_key_pair(h.db, name, delivery)

    new = run_async(main())
    if private_key is not None:
        err.print(f"private key written to {private_key}", markup=False, highlight=False)
        if as_json:
            print_json(_key_dict(new.key))


class _Printed:
    """The private key on stdout (as `openstack keypair create` does), printed before
    the pair is stored: if stdout is gone, nothing is stored and a retry just works."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def save(self, new: keypairs.NewKeyPair) -> None:
        assert new.private_key is not None
        try:
            if self.as_json:
                print_json({**_key_dict(new.key), "private_key": new.private_key})
            else:
                sys.stdout.write(new.private_key)
            sys.stdout.flush()
        except OSError as exc:
            raise HerdError(f"cannot print the private key: {os_reason(exc)}") from None

    def undo(self) -> None:
        """What was printed cannot be taken back; the error says it was not stored."""


@app.command("import")
def import_(
    name: Annotated[str, typer.Argument(help="Key pair name.")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="An OpenSSH public key file (id_ed25519.pub).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Register an existing public key."""
    origin = f"--public-key {public_key}"
    data = read_limited(public_key.expanduser(), keypairs.MAX_PUBLIC_KEY, origin)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{origin}: not UTF-8 text ({exc.reason})") from None

    async def main() -> keypairs.NewKeyPair:
        async with herd() as h:
            return await keypairs.import_key_pair(h.db, name, text, origin)

    key = run_async(main()).key
    if as_json:
        print_json(_key_dict(key))
    else:
        err.print(
            f"key pair {key.name} imported ({key.fingerprint})", markup=False, highlight=False
        )


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """List key pairs."""

    async def main() -> list[KeyPair]:
        async with herd() as h:
            return await keypairs.list_key_pairs(h.db)

    rows = run_async(main())
    if as_json:
        print_json([_key_dict(k) for k in rows])
        return
    out.print(
        table(
            None,
            ("name", "fingerprint", "age"),
            ((k.name, k.fingerprint, age(k.created_at)) for k in rows),
        )
    )


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="Key pair name.")], as_json: JsonOpt = False
) -> None:
    """Delete a key pair; servers keep the key they booted with."""

    async def main() -> None:
        async with herd() as h:
            await keypairs.delete_key_pair(h.db, name)

    run_async(main())
    if as_json:
        print_json({"keypair": name, "deleted": True})
    else:
        err.print(f"key pair {name} deleted")
