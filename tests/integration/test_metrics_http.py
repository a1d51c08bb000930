"""The metrics endpoint over real HTTP on loopback, scraped while the engine's loop runs.

The scrape comes from another thread (as Prometheus' requests do, through
prometheus_client's server threads); the collector must read the engine on
the event loop and answer within the scrape.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoballoon_core.config import MetricsSettings
from autoballoon_core.metrics import install, uninstall
from autoballoon_core.model import MiB, PressureLevel
from autoballoon_core.testing import harness

SETTINGS = {
    "engine": {"policy": "seed-levels", "coalesce_interval": 0.0},
    "guard": {"floor": "256MiB", "cooldown": 0},
    "sources": {"guest-channel": {"enabled": True}},
}


def fetch(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_scrape_over_http_while_the_loop_runs() -> None:
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        metrics = install(h.engine.manager, h.engine,
                          MetricsSettings(enabled=True, address="127.0.0.1", port=0))
        try:
            assert metrics.server is not None
            assert metrics.server.server_address[0] == "127.0.0.1"
            h.host_event(PressureLevel.MEDIUM)
            await h.settle()
            status, content_type, text = await asyncio.to_thread(fetch, metrics.port)
            assert status == 200
            assert content_type.startswith("text/plain")
            found = parse(text)
            assert found[("autoballoon_scrape_engine_ok", ())] == 1
            assert found[("autoballoon_guest_actual_bytes", (("guest", "fake:a"),))] == 1008 * MiB
            assert found[("autoballoon_rounds_total", (("trigger", "host-pressure"),))] == 1
            assert found[("autoballoon_agent_messages_total", (("result", "accepted"),))] == 0
            assert found[("autoballoon_agent_messages_total", (("result", "dropped"),))] == 0
            assert ("autoballoon_source_reading",
                    (("name", "guest-channel.connected"), ("source", "guest-channel"))) in found
            # the guest-scoped source has no host level
            assert ("autoballoon_host_pressure_level",
                    (("source", "guest-channel"),)) not in found
            # the default registry's process metrics are not mixed in: our own registry
            assert not any(name.startswith("process_") for name, _l in found)
            # many scrapes at once from several threads, the loop still busy
            results = await asyncio.gather(
                *(asyncio.to_thread(fetch, metrics.port) for _ in range(8)))
            assert all(r[0] == 200 and "autoballoon_guests 1.0" in r[2] for r in results)
        finally:
            uninstall(h.engine.manager, metrics)
        with pytest.raises(OSError):
            await asyncio.to_thread(fetch, metrics.port or 9)


async def test_a_stuck_loop_gives_a_partial_scrape_not_a_hang(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("autoballoon_core.metrics.SCRAPE_TIMEOUT", 0.3)
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        metrics = install(h.engine.manager, h.engine,
                          MetricsSettings(enabled=True, address="127.0.0.1", port=0))
        try:
            h.host_event(PressureLevel.MEDIUM)
            await h.settle()
            loop = asyncio.get_running_loop()
            # block the loop in a blocking call while a thread scrapes
            scrape = loop.run_in_executor(None, fetch, metrics.port)
            time.sleep(1.0)  # the loop is stuck: the collector must give up
            status, _ct, text = await scrape
            found = parse(text)
            assert status == 200
            assert found[("autoballoon_scrape_engine_ok", ())] == 0
            assert found[("autoballoon_rounds_total", (("trigger", "host-pressure"),))] == 1
            assert not any(name.startswith("autoballoon_guest_") for name, _l in found)
        finally:
            uninstall(h.engine.manager, metrics)


async def test_disabled_serves_nothing_and_busy_port_fails() -> None:
    async with harness(SETTINGS, guests={"a": (1024 * MiB, 1024 * MiB)}) as h:
        off = install(h.engine.manager, h.engine, MetricsSettings(enabled=False))
        assert off.server is None and off.port == 0
        uninstall(h.engine.manager, off)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(OSError):
                install(h.engine.manager, h.engine,
                        MetricsSettings(enabled=True, address="127.0.0.1", port=port))
        # a failed install leaves no plugin registered behind
        assert h.engine.manager.get_plugin("metrics") is None
