"""`herd lab up | status | down`: real hypervisors on this machine, for tests and demos.

Tables and progress go to stderr; `status --json` is the only thing on stdout.
Errors are LabError, turned into one line and an exit code by the main CLI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
import yaml
from rich.table import Table

from orchestrator.cli.output import err, print_json, table, text
from orchestrator.endpoints import host_port
from orchestrator.lab import (
    BASTION_USER,
    DEFAULT_BASE_ADDRESS,
    DEFAULT_HOSTS,
    DEFAULT_ROOT,
    DEFAULT_SSH_PORT,
    ROOT_ENV,
    Lab,
    LabHostStatus,
    LabInfo,
    guest_image,
)

app = typer.Typer(
    help=(
        "A lab of real hypervisors on this machine (root only): each host is a mount+UTS+"
        "network namespace with its own libvirtd, virtlogd and sshd on the lab's management "
        "network, and guests share a provider bridge."
    ),
    no_args_is_help=True,
)

ROOT_OPTION = typer.Option(
    DEFAULT_ROOT, "--root", envvar=ROOT_ENV, help="Directory that holds the whole lab."
)


@app.command()
def up(
    hosts: int | None = typer.Option(
        None,
        "--hosts",
        min=1,
        max=250,
        help=f"How many hosts (default {DEFAULT_HOSTS}, or the lab's size); a lab never shrinks.",
    ),
    base_address: str | None = typer.Option(
        None,
        "--base-address",
        help=(
            f"First host's management address, in 198.18.0.0/16 (default "
            f"{DEFAULT_BASE_ADDRESS}); its third octet N names the lab's subnets "
            "198.18.N.0/24 and 198.19.N.0/24."
        ),
    ),
    ssh_port: int | None = typer.Option(
        None,
        "--ssh-port",
        min=1,
        max=65535,
        help=f"sshd port on every host (default {DEFAULT_SSH_PORT}).",
    ),
    bastion: bool | None = typer.Option(
        None,
        "--bastion/--no-bastion",
        help=(
            "Put the hosts' management network behind one bastion sshd: herd has no "
            "route to the hosts, and the inventory reaches them with ssh.proxy_jump. "
            "Fixed when the lab is made."
        ),
    ),
    root: Path = ROOT_OPTION,
    json_output: bool = typer.Option(
        False, "--json", help="One JSON document on stdout: the lab's hosts, keys, inventory."
    ),
) -> None:
    """Bring the lab up, or bring up what is missing; writes <root>/inventory.yaml."""
    lab = Lab(root, base_address, ssh_port, bastion)
    done: list[str] = []

    def progress(message: str) -> None:
        done.append(message)
        err.print(f"  {message}")

    started = time.monotonic()
    info = lab.up(hosts, progress=progress)
    if done:
        err.print(f"lab up: {len(info.hosts)} host(s) in {time.monotonic() - started:.1f}s")
    else:
        err.print(f"lab at {info.root} is already up ({len(info.hosts)} host(s))")
    err.print(_hosts_table(info))
    first = info.hosts[0]
    options = f"-i {info.key} -o UserKnownHostsFile={info.known_hosts}"
    # Not -J: OpenSSH's jump login would not use the lab's key and known_hosts.
    jump = (
        f'-o "ProxyCommand=ssh {options} -p {info.ssh_port} -W %h:%p '
        f'{BASTION_USER}@{info.network.bastion_address}" '
        if info.bastion
        else ""
    )
    err.print(
        f"ssh:       ssh {options} {jump}-p {first.port} {first.user}@{first.address}",
        soft_wrap=True,
    )
    if info.bastion:
        err.print(f"bastion:   {info.bastion_endpoint}, the only way to the hosts", soft_wrap=True)
    err.print(f"inventory: herd inventory apply {info.inventory}", soft_wrap=True)
    if json_output:
        print_json(
            {
                "root": str(info.root),
                "changed": bool(done),
                "steps": done,
                "seconds": round(time.monotonic() - started, 1),
                "inventory": str(info.inventory),
                "key": str(info.key),
                "known_hosts": str(info.known_hosts),
                "bastion": info.bastion_endpoint if info.bastion else None,
                "hosts": [
                    {
                        "name": host.name,
                        "address": host.address,
                        "port": host.port,
                        "user": host.user,
                        "dir": str(host.dir),
                    }
                    for host in info.hosts
                ],
            }
        )


@app.command()
def status(
    json_output: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    root: Path = ROOT_OPTION,
) -> None:
    """Each host's namespace, daemons and domain count; exits 1 if any host is unwell."""
    lab = Lab(root)
    rows = lab.status()
    bastion = lab.bastion_status()
    if json_output:
        print_json(
            {
                "root": str(lab.root),
                "hosts": [row.as_dict() for row in rows],
                "bastion": bastion.as_dict() if bastion else None,
            }
        )
    else:
        err.print(_status_table(rows))
        if bastion is not None:
            err.print(
                f"bastion {bastion.endpoint}: namespace {_alive(bastion.namespace)}, "
                f"sshd {_alive(bastion.sshd)}",
                soft_wrap=True,
            )
    if not all(row.healthy for row in rows) or (bastion is not None and not bastion.healthy):
        raise typer.Exit(1)


@app.command()
def down(
    root: Path = ROOT_OPTION,
    json_output: bool = typer.Option(
        False, "--json", help="One JSON document on stdout: what was removed."
    ),
) -> None:
    """Destroy the lab's domains, end every process of every host, delete the root."""
    started = time.monotonic()
    existed = root.exists()
    hosts = sorted(p.name for p in root.glob("lab-*") if p.is_dir()) if existed else []
    steps: list[str] = []

    def progress(message: str) -> None:
        steps.append(message)
        err.print(f"  {message}")

    Lab(root).down(progress=progress)
    seconds = time.monotonic() - started
    err.print(f"lab down in {seconds:.1f}s")
    if json_output:
        print_json(
            {
                "root": str(root),
                "removed": existed,
                "hosts": hosts,
                "steps": steps,
                "seconds": round(seconds, 1),
            }
        )


def _hosts_table(info: LabInfo) -> Table:
    return table(
        "lab hosts",
        ("name", "address", "directory"),
        ((host.name, host_port(host.address, host.port), host.dir) for host in info.hosts),
    )


def _status_table(rows: list[LabHostStatus]) -> Table:
    return table(
        "lab status",
        ("name", "address", "namespace", "links", "virtlogd", "libvirtd", "sshd", "domains"),
        (
            (
                row.name,
                host_port(row.address, row.port),
                _alive(row.namespace),
                _alive(row.links),
                _alive(row.virtlogd),
                _alive(row.libvirtd),
                _alive(row.sshd),
                row.domains,
            )
            for row in rows
        ),
    )


def _alive(value: bool) -> str:
    return text("up", "green") if value else text("down", "red")


@app.command()
def image(
    output: Path = typer.Option(
        Path("herd-test-image"), "--output", "-o", help="Directory for the image's files."
    ),
    kernel: str | None = typer.Option(
        None, "--kernel", help="Kernel version (default: the newest in /boot with modules)."
    ),
) -> None:
    """Build herd's tiny test guest from this machine's cloud kernel and busybox-static:
    it boots in seconds and prints its NoCloud seed (UUID, hostname, IPs, user-data) on
    the serial console. Prints the inventory entries that name it."""
    built = guest_image.build(output.absolute(), kernel)
    err.print(f"test guest image for kernel {built.kernel_version} in {output.absolute()}")
    sys.stdout.write(
        yaml.safe_dump(
            {"images": built.inventory_images()}, sort_keys=False, default_flow_style=False
        )
    )
