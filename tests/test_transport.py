"""The host transports: the in-process one for the central's own host, and that nothing else
in the core asks which kind a server is."""
from __future__ import annotations

import ast
from pathlib import Path

from central import transport
from central.sample import check_document

CORE = Path(transport.__file__).parent


async def test_local_transport_collects_in_process(central):
    server = await central.storage.get_server("local")
    local = central.transports.of(server)
    assert local is central.transports.local and local.kind == transport.LOCAL
    await local.prepare()
    doc, text = await local.document(server)
    assert check_document(doc) is doc and text.startswith("{") and '"hostname"' in text
    inventory = await local.inventory(server)
    assert isinstance(inventory, dict) and inventory
    assert (await local.check(server))["ok"] is True
    channel = local.action_channel(server)
    status, table = await channel.processes()
    assert status == 200 and any(p["pid"] > 0 for p in table["processes"])
    channel.close()


async def test_what_differs_between_kinds_is_said_by_the_transport(central):
    local = await central.storage.get_server("local")
    ssh = await central.storage.add_server("web1", "10.0.0.5", port=2222, user="mon")
    assert central.transports.address(local) == "(this host)"
    assert central.transports.address(ssh) == "mon@10.0.0.5:2222"
    assert central.transports.address(ssh.to_dict()) == "mon@10.0.0.5:2222"
    assert central.transports.of(ssh).no_host_key is None and central.transports.of(local).no_host_key
    assert central.transports.of(ssh).no_agent is None and central.transports.of(local).no_agent
    assert central.transports.of(ssh).settable is None
    assert central.transports.of(local).settable == {"tags", "interval_s"}


def test_no_core_module_asks_a_servers_kind():
    """Only central/transport.py maps a kind to the way to reach it."""
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        if path.name == "transport.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [node.left, *node.comparators]
                if any(isinstance(n, ast.Attribute) and n.attr == "kind" for n in names) or any(
                        isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and n.slice.value == "kind"
                        for n in names):
                    offenders.append(f"{path.relative_to(CORE)}:{node.lineno}")
    assert offenders == []
