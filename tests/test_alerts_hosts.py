"""Alerts end to end on a real test host (sshd in a network namespace, the real agent, real polls)."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from central.config import AlertsConfig, NotifierConfig
from central import servers
from central.service import Central
from tests.conftest import make_config
from tests.test_notifiers import Receiver, wait_for

pytestmark = pytest.mark.hosts


async def test_sshd_stopped_raises_unreachable_and_resolves_when_back(test_host, client_key, tmp_path):
    host = await asyncio.to_thread(test_host)
    receiver = await Receiver().start()
    cfg = make_config(tmp_path, local=False)
    cfg = dataclasses.replace(
        cfg,
        ssh=dataclasses.replace(cfg.ssh, key_path=str(client_key.path)),
        alerts=dataclasses.replace(AlertsConfig(), unreachable_after=2, tick_interval=0.5),
        notifiers=(NotifierConfig(name="ops", type="webhook", url=receiver.url, timeout=5.0, backoff=0.1),),
    )
    central = await Central.open(cfg)
    try:
        await servers.add_server(central, host.name, host.address, fingerprint=host.fingerprint)
        await central.poller.start()
        server = await central.storage.get_server(host.name)

        async def online():
            return (await central.storage.get_server(host.name)).status == "online"
        await wait_for(online, timeout=30, what="the first successful poll")
        assert await central.storage.list_alerts() == []

        await asyncio.to_thread(host.stop_sshd)

        async def firing():
            return await central.storage.list_alerts(firing_only=True, server_id=server.id)
        [alert] = await wait_for(firing, timeout=30, what="the unreachable alert")
        assert (alert["rule"], alert["severity"], alert["server"]) == ("server_unreachable", "critical", host.name)
        # It fired on the configured count of failed polls, not before.
        assert alert["details"]["first"] == 2.0
        assert (await central.storage.get_server(host.name)).consecutive_failures >= 2
        await wait_for(lambda: receiver.events() == ["firing"], timeout=15, what="the firing notification")

        await asyncio.to_thread(host.start_sshd)

        async def resolved():
            return (await central.storage.get_alert(alert["id"]))["state"] == "resolved"
        await wait_for(resolved, timeout=30, what="the alert to resolve")
        await wait_for(lambda: receiver.events() == ["firing", "resolved"], timeout=15,
                       what="the resolved notification")
        [body] = receiver.requests[-1]["body"]["alerts"]
        assert (body["id"], body["state"], body["server"]) == (alert["id"], "resolved", host.name)
        assert body["url"].endswith(f"/alerts/{alert['id']}")
        assert await central.storage.list_alerts(firing_only=True) == []
    finally:
        await central.close()
        await receiver.stop()
