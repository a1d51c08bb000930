"""The guest agent in a real guest, the guest-channel source on the real socket.

A TCG guest runs the agent from the repository (through the read-only share of
the host root), then a process inside the guest allocates memory until the
guest's MemAvailable is low. The host side is the real ``guest-channel``
source connected to the QEMU chardev socket: it must see the agent's hello,
heartbeats with the guest's memory, and pressure events with a want.

Needs root, qemu-system-x86_64, busybox-static and a memory cgroup (QEMU runs
in one with a limit): missing prerequisites skip on a user's machine and fail
in CI. Also a host check of the agent's PSI triggers on this kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from autoballoon_core.interfaces import EmitFn
from autoballoon_core.model import GuestState, PressureEvent, PressureLevel
from autoballoon_guest import agent
from autoballoon_lab import GuestConfig, Lab, LabGuest, ensure_image
from autoballoon_lab.paths import host_python, python_path_entries, repo_root
from autoballoon_lab.prereq import require, require_lab
from autoballoon_plugins.sources.channel.source import ChannelSettings, GuestChannelSource

MIB = 1 << 20
GUEST_MIB = 512
HOLD_SHARE = 0.08  # the in-guest hog stops allocating below 8 % MemAvailable
HOLD_SECONDS = 40

# Allocates 4 MiB at a time (bytearray zero-fills, so pages are touched) until
# MemAvailable drops below the share, then holds. Inside the guest only.
GUEST_HOG = f"""
import time
def info():
    return {{l.split(':')[0]: int(l.split()[1]) for l in open('/proc/meminfo')}}
held = []
while True:
    m = info()
    if m['MemAvailable'] < {HOLD_SHARE} * m['MemTotal']:
        break
    held.append(bytearray(4 << 20))
    time.sleep(0.02)
print('GUEST-HOG held', len(held) * 4, 'MiB', flush=True)
time.sleep({HOLD_SECONDS})
print('GUEST-HOG done', flush=True)
"""


def guest_command() -> str:
    """Start the agent in the background, give it time to start, then the hog."""
    python = shlex.quote(str(host_python()))
    pythonpath = ":".join(str(p) for p in python_path_entries())
    return "\n".join([
        f"cd {shlex.quote(str(repo_root()))} || exit 126",
        f"export PYTHONPATH={shlex.quote(pythonpath)}",
        f"{python} -m autoballoon_guest --heartbeat 1 --interval 0.25 & agent=$!",
        "sleep 5",
        f"{python} -c {shlex.quote(GUEST_HOG)}",
        'kill "$agent"; wait',
    ]) + "\n"


# -- PSI triggers on this kernel ----------------------------------------------------------


def test_the_agents_psi_triggers_work_on_this_kernel() -> None:
    require(Path("/proc/pressure/memory").exists(), "kernel without PSI (/proc/pressure)")
    monitor = agent.PsiMonitor("/proc/pressure/memory", (5, 15, 40), 1.0)
    monitor.open()
    try:
        # 1 s with CAP_SYS_RESOURCE; without it the kernel only takes multiples of 2 s.
        assert monitor.window in (1.0, 2.0)
        assert sorted(monitor.fds.values()) == [agent.LOW, agent.MEDIUM, agent.CRITICAL]
        avg = monitor.avg10()
        assert avg is not None and 0.0 <= avg <= 100.0
    finally:
        monitor.close()


# -- a real guest ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab(cgroup=True)
    image = ensure_image()
    config = GuestConfig(memory_mib=GUEST_MIB, command=guest_command())
    # QEMU in a memory cgroup with a limit: the guest's memory plus QEMU's own.
    with Lab(1, config=config, image=image, cgroup_limit_mib=GUEST_MIB + 512) as running:
        running.wait_ready(90)
        yield running


def channel_guest(lab_guest: LabGuest) -> GuestState:
    return GuestState(id=f"lab:{lab_guest.name}", name=lab_guest.name, backend="lab",
                      max_bytes=GUEST_MIB * MIB, actual_bytes=GUEST_MIB * MIB, floor=0,
                      channel_path=str(lab_guest.agent_path))


async def test_pressure_inside_the_guest_reaches_the_host_as_events_with_a_want(
    lab: Lab,
) -> None:
    lab_guest = lab.guests[0]
    events: list[PressureEvent] = []
    source = GuestChannelSource(ChannelSettings(reconnect_max=0.5))
    await source.open()
    source.guest_added(channel_guest(lab_guest))
    task = asyncio.create_task(source.run(events.append))
    link = source.links[f"lab:{lab_guest.name}"]
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline:
            # Held below 8 % MemAvailable, the guest is at MEDIUM (below 10 %) at least.
            if any(e.level >= PressureLevel.MEDIUM for e in events) and (
                link.messages["heartbeat"] >= 3
            ):
                break
            if not lab_guest.alive():
                pytest.fail(f"the guest died:\n{lab_guest.console_text()[-3000:]}")
            await asyncio.sleep(0.2)
    finally:
        await source.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    console = lab_guest.console_text()
    pressing = [e for e in events if e.level >= PressureLevel.LOW]
    assert pressing, f"no pressure event; drops {dict(link.drops)}; console:\n{console[-3000:]}"
    first = pressing[0]
    assert first.guest == f"lab:{lab_guest.name}"
    assert first.source == "guest-channel"
    assert 0 < first.wanted_bytes <= GUEST_MIB * MIB
    assert first.time <= time.monotonic()
    assert link.hello is not None and link.hello.agent == agent.AGENT
    # The guest has PSI; as root inside it the agent may use a 1 s window.
    assert link.hello.mode == "psi", console[-2000:]
    assert link.heartbeat is not None
    assert 0.5 * GUEST_MIB * MIB < link.heartbeat.total <= GUEST_MIB * MIB
    assert link.drops == {}, dict(link.drops)
    medium = next(e for e in events if e.level >= PressureLevel.MEDIUM)
    assert medium.wanted_bytes >= 64 * MIB  # at least the agent's min_want under pressure
    print(f"\nguest-agent: {len(events)} events, first {first.level.name} want "
          f"{first.wanted_bytes / MIB:.0f} MiB; messages {dict(link.messages)}; "
          f"window {link.hello.window}s", flush=True)
    assert os.path.exists(lab_guest.agent_path)


# -- the host end going away and coming back ------------------------------------------------


def agent_only_command() -> str:
    python = shlex.quote(str(host_python()))
    pythonpath = ":".join(str(p) for p in python_path_entries())
    return "\n".join([
        f"cd {shlex.quote(str(repo_root()))} || exit 126",
        f"export PYTHONPATH={shlex.quote(pythonpath)}",
        f"exec {python} -m autoballoon_guest --heartbeat 0.5",
    ]) + "\n"


async def test_the_agent_survives_the_host_end_going_away_and_greets_it_again() -> None:
    """Real virtio_console semantics: EAGAIN while QEMU's chardev has no client."""
    async with one_guest(agent_only_command(), 384) as lab_guest:
        state = channel_guest(lab_guest)
        events: list[PressureEvent] = []
        async with channel_source(ChannelSettings(reconnect_max=0.5), events.append) as source:
            source.guest_added(state)
            first = source.links[state.id]
            await _wait(lambda: first.messages["heartbeat"] >= 3, lab_guest)
            assert first.hello is not None
            source.guest_removed(state.id)  # the host end goes away ...
            await asyncio.sleep(3.0)  # ... for six heartbeats
            assert lab_guest.alive()
            source.guest_added(state)  # ... and comes back
            second = source.links[state.id]
            await _wait(lambda: second.messages["heartbeat"] >= 3, lab_guest)
        console = lab_guest.console_text()
    # The agent noticed (EAGAIN), dropped what it could not send, and said hello again.
    assert second.hello is not None, console[-2000:]
    assert second.hello.seq > first.hello.seq
    assert "host end not reading" in console, console[-2000:]
    assert second.drops == {} and first.drops == {}
    assert "Traceback" not in console, console[-3000:]


@contextlib.asynccontextmanager
async def one_guest(command: str, memory_mib: int) -> AsyncIterator[LabGuest]:
    """One booted lab guest running ``command``; stopped when the block ends."""
    require_lab()
    config = GuestConfig(memory_mib=memory_mib, command=command)
    with Lab(1, config=config, image=ensure_image()) as lab:
        await asyncio.to_thread(lab.wait_ready, 90)
        yield lab.guests[0]


@contextlib.asynccontextmanager
async def channel_source(settings: ChannelSettings,
                         emit: EmitFn) -> AsyncIterator[GuestChannelSource]:
    """The real source, running on this loop until the block ends."""
    source = GuestChannelSource(settings)
    await source.open()
    task = asyncio.create_task(source.run(emit))
    try:
        yield source
    finally:
        await source.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _wait(condition: Callable[[], bool], lab_guest: LabGuest, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; console:\n{lab_guest.console_text()[-3000:]}")
        if not lab_guest.alive():
            raise AssertionError(f"the guest died:\n{lab_guest.console_text()[-3000:]}")
        await asyncio.sleep(0.1)


# -- a guest flooding its port (issue 12, item 1) -------------------------------------------


def flood_command() -> str:
    """Find the agent's port as the agent does, then write bare newlines to it forever."""
    return "\n".join([
        "dev=",
        "for p in /sys/class/virtio-ports/*; do",
        f'  [ "$(cat "$p/name")" = {agent.DEFAULT_PORT_NAME} ] && dev="/dev/${{p##*/}}"',
        "done",
        'echo "FLOOD-PORT $dev"',
        "yes '' > \"$dev\"",
        'echo "FLOOD-END $?"',
    ]) + "\n"


async def test_a_guest_flooding_its_port_is_read_once_per_token() -> None:
    """``yes '' > /dev/vport…`` in a real guest: the host reads one chunk per token.

    The bound is the design's: between two tokens the source reads nothing, so
    what it takes in (refused lines included) is at most one read per token.
    Before back-pressure the source read the port as fast as the guest wrote.
    """
    async with one_guest(flood_command(), 256) as lab_guest:
        state = channel_guest(lab_guest)
        lateness: list[float] = []
        settings = ChannelSettings(rate=1, burst=1, reconnect_max=0.5)
        async with channel_source(settings, lambda _event: None) as source:
            source.guest_added(state)
            link = source.links[state.id]
            await _wait(lambda: link.drops["rate-limited"] > 0, lab_guest)
            lines_before = sum(link.drops.values())
            pauses_before = link.pauses
            loop = asyncio.get_running_loop()
            start = time.monotonic()
            while time.monotonic() - start < 10:
                due = loop.time() + 0.01
                await asyncio.sleep(0.01)
                lateness.append(loop.time() - due)
            elapsed = time.monotonic() - start
            lines = sum(link.drops.values()) - lines_before
            pauses = link.pauses - pauses_before
            connected = link.connected
        alive = lab_guest.alive()
        console = lab_guest.console_text()
    assert "FLOOD-PORT /dev/vport" in console, console[-2000:]
    assert "FLOOD-END" not in console, console[-2000:]
    assert alive and connected
    reads = elapsed * 1 + 2  # tokens due in the window, plus the one in flight at each end
    assert 0 < lines <= reads * settings.max_line, (lines, reads)  # one token's worth a read
    assert pauses >= elapsed / 2
    lateness.sort()
    print(f"\nflooding guest: {lines} lines taken in {elapsed:.1f}s ({pauses} pauses); "
          f"10 ms timer lateness p99 {lateness[int(.99 * (len(lateness) - 1))] * 1e3:.2f} ms",
          flush=True)
