"""Agent ops are named in one place: orchestrator/rpc/agent_api.py, one coroutine each.

The op table is the agent's own (``Agent().capabilities``: every call op, then every
job op), so an op added to the agent fails these tests until the client and
docs/protocol.md have it too.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.calls import Agent
from orchestrator.rpc.agent_api import AgentAPI

REPO = Path(__file__).resolve().parents[3]
ORCHESTRATOR = REPO / "orchestrator"
RPC = ORCHESTRATOR / "rpc"
OPS = frozenset(Agent().capabilities)

# A method named ``list`` would shadow the builtin in the class's annotations.
METHOD_OF = {"list": "list_domains"}
# Sent by the pool (rpc/pool.py: cast and follow), which these coroutines call.
SENT_BY_THE_POOL = {"job_start", "job_wait"}

# Words that are agent ops and also herd's own names for its actions and events (Nova's
# instance actions: a server's "delete" action, its "build" event, the "live_migrate"
# action). Every request goes through AgentAPI (see the next test), so such a word
# outside rpc/ cannot reach an agent.
ACTION_WORDS = {"build", "delete", "live_migrate", "rescue", "unrescue"}
# Calls that take an op name: nothing outside rpc/ makes them.
OP_TAKING = {"call", "cast", "run", "follow", "job_start"}


def modules_outside_rpc() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(ORCHESTRATOR.rglob("*.py")):
        if RPC in path.parents:
            continue
        if "migrations" in path.relative_to(ORCHESTRATOR).parts:
            continue  # the DB's history: column names, never edited
        yield str(path.relative_to(REPO)), ast.parse(path.read_text(), str(path))


def other_roles(tree: ast.Module) -> set[int]:
    """ids of string constants that are a name in another vocabulary: a CLI command
    (a decorator's argument), a word of a command line or of a list of names (a
    list or tuple led by another string), a JSON or dict field (a key, a subscript), a
    conductor task's ``kind`` (its name in the journal: the power task is "power")."""
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for decorator in node.decorator_list:
                exempt.update(id(n) for n in ast.walk(decorator))
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.Assign) and [
                    getattr(t, "id", None) for t in statement.targets
                ] == ["kind"]:
                    exempt.add(id(statement.value))
        elif isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            first = node.elts[0]
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and first.value not in OPS
            ):
                exempt.update(id(e) for e in node.elts)
        elif isinstance(node, ast.Dict):
            exempt.update(id(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            exempt.add(id(node.slice))
    return exempt


def op_literals(tree: ast.Module) -> Iterator[tuple[int, str]]:
    exempt = other_roles(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and node.value in OPS
            and node.value not in ACTION_WORDS
            and id(node) not in exempt
        ):
            yield node.lineno, node.value


def receiver(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute):
        if node.attr.endswith("pool"):
            return node.attr
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def op_taking_calls(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            if attr == "job_start" or (
                attr in OP_TAKING and receiver(node.func.value).endswith("pool")
            ):
                yield node.lineno, attr


def test_no_module_outside_rpc_spells_an_agent_op() -> None:
    found = [
        f"{name}:{line}: {op!r}"
        for name, tree in modules_outside_rpc()
        for line, op in op_literals(tree)
    ]
    assert found == [], "use orchestrator.rpc.agent_api.AgentAPI:\n" + "\n".join(found)


def test_no_module_outside_rpc_sends_a_request_by_op_name() -> None:
    found = [
        f"{name}:{line}: .{attr}(...)"
        for name, tree in modules_outside_rpc()
        for line, attr in op_taking_calls(tree)
    ]
    assert found == [], "use orchestrator.rpc.agent_api.AgentAPI:\n" + "\n".join(found)


def test_the_scan_sees_an_op_sent_by_name_and_not_a_cli_command() -> None:
    tree = ast.parse(
        '@app.command("list")\n'
        "def listing(): ...\n"
        'argv = ["virsh", "list", "--all"]\n'
        'seen = answer["jobs"]\n'
        'async def f(pool, target): await pool.call(target, "image_remove", {})\n'
        'async def g(self, target): await self.pool.cast(target, "resize_drop", {}, "j")\n'
    )
    assert list(op_literals(tree)) == [(5, "image_remove"), (6, "resize_drop")]
    assert list(op_taking_calls(tree)) == [(5, "call"), (6, "cast")]


def coroutines() -> dict[str, object]:
    return {
        name: member
        for name, member in vars(AgentAPI).items()
        if not name.startswith("_")
        and inspect.iscoroutinefunction(getattr(member, "__func__", member))
    }


def test_every_agent_op_has_exactly_one_coroutine_and_no_coroutine_is_extra() -> None:
    assert sorted(coroutines()) == sorted(METHOD_OF.get(op, op) for op in OPS)


@pytest.mark.parametrize("op", sorted(OPS - SENT_BY_THE_POOL))
def test_each_coroutine_sends_its_own_op_and_no_other(op: str) -> None:
    method = coroutines()[METHOD_OF.get(op, op)]
    source = inspect.getsource(getattr(method, "__func__", method))
    tree = ast.parse(inspect.cleandoc("\n" + source) if source.startswith(" ") else source)
    named = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in OPS}
    assert named == {op}


def documented_ops() -> set[str]:
    text = (REPO / "docs" / "protocol.md").read_text()
    calls = re.findall(r"^\| `(\w+)` \|", text, re.M)  # the table of calls
    jobs_and_probes = re.findall(r"`(\w+)` args", text)
    return set(calls) | set(jobs_and_probes)


def test_docs_protocol_lists_every_agent_op_and_no_other() -> None:
    assert documented_ops() == OPS
