"""The operator contract, through the real `herd` process: bad input is one line on
stderr with a meaningful exit code, and nothing already stored is lost."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli, assert_one_line_error
from tests.unit.cli.forkcli import ForkedHerd

CATALOG = """\
flavors:
  - name: m1.small
    vcpus: 1
    ram_mb: 512
    disk_gb: 1
images:
  - name: blank
    source: {source}
    format: qcow2
"""


@pytest.fixture
def herd(tmp_path: Path, db_url: str) -> HerdCli:
    """On each selected engine (db_url): the CLI stores what these tests read back."""
    return ForkedHerd(tmp_path, database_url=db_url)


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    image = tmp_path / "blank.qcow2"
    image.write_bytes(b"QFI\xfb\0\0\0\x03" + bytes(504))  # an empty qcow2 v3 header
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG.format(source=image))
    return path


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends


def test_a_bad_inventory_line_names_file_line_and_field(herd: HerdCli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "flavors:\n  - name: m1.small\n    vcpus: many\n    ram_mb: 512\n    disk_gb: 1\n"
    )
    for verb in ("validate", "apply"):
        line = assert_one_line_error(herd.run("inventory", verb, str(bad)), code=2)
        assert f"{bad}:3" in line and "vcpus" in line
    assert herd.ok("flavor", "list", "--json").json() == []


def test_a_missing_inventory_file_is_one_line(herd: HerdCli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_one_line_error(herd.run("inventory", "apply", str(missing)), contains=str(missing))


def test_unknown_names_are_not_found(herd: HerdCli, catalog: Path) -> None:
    herd.ok("inventory", "apply", str(catalog))
    assert_one_line_error(
        herd.run("server", "create", "a", "--flavor", "m9.huge", "--image", "blank"),
        code=3,
        contains="m9.huge",
    )
    assert_one_line_error(
        herd.run("server", "create", "a", "--flavor", "m1.small", "--image", "ghost"),
        code=3,
        contains="ghost",
    )
    assert_one_line_error(herd.run("server", "show", "nobody"), code=3, contains="nobody")
    assert_one_line_error(herd.run("server", "delete", "nobody"), code=3, contains="nobody")
    assert herd.servers() == []


def test_no_host_is_no_valid_host_and_the_server_is_recorded_as_error(
    herd: HerdCli, catalog: Path
) -> None:
    herd.ok("inventory", "apply", str(catalog))
    result = herd.run(
        "server", "create", "lonely", "--flavor", "m1.small", "--image", "blank", "--json"
    )
    assert_one_line_error(result, code=5, contains="no valid host")
    # As in Nova, the request is not lost: the server is kept in ERROR with its fault.
    (server,) = herd.servers()
    assert server["name"] == "lonely" and server["vm_state"] == "error"
    assert "no valid host" in herd.server("lonely")["faults"][0]["message"]


def test_a_host_that_does_not_answer_is_one_line_and_marked_down(
    herd: HerdCli, tmp_path: Path
) -> None:
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        "hosts:\n"
        "  - name: ghost\n"
        "    address: 127.0.0.1\n"
        f"    ssh: {{port: {closed_port()}, known_hosts: {tmp_path / 'kh'}}}\n"
    )
    herd.ok("inventory", "apply", str(inventory))
    assert_one_line_error(herd.run("host", "refresh", "ghost"), code=6, contains="ghost")
    (host,) = herd.ok("host", "list", "--json").json()
    assert host["name"] == "ghost" and host["status"] == "down"


def test_an_unusable_database_url_is_one_line(herd: HerdCli) -> None:
    herd.env["HERD_DATABASE_URL"] = "nosuchdb://x"
    assert_one_line_error(herd.run("server", "list"), contains="HERD_DATABASE_URL")


def test_validate_reports_changes_without_writing(herd: HerdCli, catalog: Path) -> None:
    planned = herd.ok("inventory", "validate", str(catalog), "--json").json()
    assert {(c["kind"], c["name"]) for c in planned} >= {("flavor", "m1.small"), ("image", "blank")}
    assert herd.ok("flavor", "list", "--json").json() == []
    herd.ok("inventory", "apply", str(catalog))
    assert [f["name"] for f in herd.ok("flavor", "list", "--json").json()] == ["m1.small"]


def test_dry_run_explains_why_no_host_fits_and_creates_nothing(
    herd: HerdCli, catalog: Path, tmp_path: Path
) -> None:
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        "hosts:\n"
        "  - name: ghost\n"
        "    address: 127.0.0.1\n"
        f"    ssh: {{port: {closed_port()}, known_hosts: {tmp_path / 'kh'}}}\n"
        "  - name: resting\n"
        "    address: 127.0.0.2\n"
        "    enabled: false\n"
    )
    herd.ok("inventory", "apply", str(inventory), str(catalog))
    result = herd.run(
        "server", "create", "x", "--flavor", "m1.small", "--image", "blank",
        "--dry-run", "--refresh", "--explain", "--json",
    )  # fmt: skip
    assert_one_line_error(result, code=5, contains="no valid host")  # as without --dry-run
    plan = result.json()
    assert plan["placements"] == []
    assert [u["server"] for u in plan["unplaced"]] == ["x"]
    assert plan["summary"].startswith("0/2 hosts fit: 2 compute")
    reasons = {v["host"]: v["reason"] for v in plan["explanation"]}
    assert reasons["resting"] == "disabled"
    assert reasons["ghost"].startswith("down")
    assert herd.servers() == []

    table = herd.run(
        "server",
        "create",
        "x",
        "--flavor",
        "m1.small",
        "--image",
        "blank",
        "--dry-run",
        "--refresh",
        "--explain",
    ).stdout
    assert "0/2 hosts fit" in table and "not placed" in table
    assert_one_line_error(
        herd.run("server", "create", "x", "--flavor", "m1.small", "--image", "blank",
                 "--group", "nope", "--dry-run"),
        code=3, contains="server group 'nope' not found",
    )  # fmt: skip


def test_key_pairs_round_trip_and_a_bad_public_key_is_one_line(
    herd: HerdCli, tmp_path: Path
) -> None:
    private = tmp_path / "k"
    herd.ok("keypair", "create", "gen", "--private-key", str(private))
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    (listed,) = herd.ok("keypair", "list", "--json").json()
    assert listed["name"] == "gen" and listed["fingerprint"].startswith("SHA256:")
    assert listed["public_key"].startswith("ssh-ed25519 ")
    assert_one_line_error(
        herd.run("keypair", "create", "gen", "--private-key", str(tmp_path / "k2")),
        code=4,
        contains="key pair 'gen' already exists",
    )
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 not-base64!!\n")
    assert_one_line_error(
        herd.run("keypair", "import", "bad", "--public-key", str(bad)),
        code=2,
        contains=f"--public-key {bad}: not an SSH public key",
    )
    assert_one_line_error(
        herd.run("keypair", "import", "bad", "--public-key", str(tmp_path / "missing.pub")),
        code=2,
    )
    herd.ok("keypair", "delete", "gen")
    assert herd.ok("keypair", "list", "--json").json() == []


def test_image_create_checks_its_source_and_references(herd: HerdCli, tmp_path: Path) -> None:
    assert_one_line_error(
        herd.run("image", "create", "x", "--url", "https://a/x", "--file", str(tmp_path)),
        code=2,
        contains="exactly one of --file, --url, --host-path",
    )
    assert_one_line_error(
        herd.run("image", "create", "x", "--file", str(tmp_path / "nope.img")),
        code=2,
        contains="no such file",
    )
    assert_one_line_error(
        herd.run("image", "create", "x", "--url", "https://a/x", "--property", "kernel_id=k"),
        code=2,
        contains="kernel_id=k: it must name an existing image of format aki",
    )
    assert_one_line_error(
        herd.run("image", "create", "x", "--url", "https://a/x", "--format", "vmdk"),
        code=2,
        contains="format",
    )
    herd.ok("image", "create", "x", "--url", "https://a/x")
    assert_one_line_error(herd.run("image", "create", "x", "--url", "https://a/x"), code=4)
    herd.ok("image", "delete", "x")
    assert_one_line_error(herd.run("image", "delete", "x"), code=3)


def test_resize_wants_exactly_one_of_flavor_confirm_revert(herd: HerdCli) -> None:
    for args in ((), ("--flavor", "m1.small", "--confirm"), ("--confirm", "--revert")):
        line = assert_one_line_error(herd.run("server", "resize", "web", *args), code=2)
        assert "exactly one of --flavor F, --confirm or --revert" in line
    assert_one_line_error(
        herd.run("server", "resize", "web", "--confirm", "--host", "hv1"),
        code=2,
        contains="--host goes with --flavor",
    )
    assert_one_line_error(
        herd.run("server", "resize", "web", "--flavor", "m1.small"), code=3, contains="web"
    )


def test_no_wait_moves_of_an_unknown_server_fail_before_anything_starts(
    herd: HerdCli, tmp_path: Path
) -> None:
    for verb in (("migrate",), ("live-migrate",), ("resize", "--flavor", "m1.small")):
        result = herd.run("server", *verb, "ghost", "--no-wait")
        assert_one_line_error(result, code=3, contains="ghost")
    assert not (tmp_path / "state" / "herd").exists() or not any(
        (tmp_path / "state" / "herd").iterdir()
    )  # no background process was started, so no log either
