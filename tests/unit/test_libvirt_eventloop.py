"""The event implementation accepts libvirt's calls from worker threads.

libvirt's remote client updates its socket watch and keepalive timer from
whichever thread makes an API call; these tests make those calls from a
thread and check that the watches and timers work, on the loop's thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

from autoballoon_plugins.backends.libvirt import eventloop
from autoballoon_plugins.backends.libvirt.eventloop import ThreadSafeAsyncIOImpl

libvirt = pytest.importorskip("libvirt")
libvirtaio = pytest.importorskip("libvirtaio")


@pytest.fixture
def freed(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Opaque objects libvirt would be asked to free (our opaques are plain objects)."""
    calls: list[Any] = []
    monkeypatch.setattr(libvirt, "virEventInvokeFreeCallback", calls.append)
    return calls


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def _until(condition: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_timer_added_updated_removed_from_a_thread(freed: list[Any]) -> None:
    impl = ThreadSafeAsyncIOImpl(asyncio.get_running_loop())
    fired: list[tuple[int, int]] = []
    opaque = object()

    def callback(timer: int, _opaque: Any) -> None:
        fired.append((timer, threading.get_ident()))

    timer = await _in_thread(impl._add_timeout, 10, callback, opaque)
    assert timer >= 1 << 30  # a reserved id, mapped once the loop applied the add
    await _until(lambda: len(fired) >= 2)
    real = impl._real(timer)
    assert all(t == real for t, _ in fired)
    assert {ident for _, ident in fired} == {threading.get_ident()}  # ran on the loop
    await _in_thread(impl._update_timeout, timer, -1)
    await asyncio.sleep(0.05)
    count = len(fired)
    await asyncio.sleep(0.05)
    assert len(fired) == count  # disabled
    assert await _in_thread(impl._remove_timeout, timer) == 0
    await _until(lambda: freed == [opaque])
    assert await impl.settle()


async def test_handle_added_and_removed_from_a_thread(freed: list[Any]) -> None:
    impl = ThreadSafeAsyncIOImpl(asyncio.get_running_loop())
    left, right = socket.socketpair()
    events: list[tuple[int, int, int]] = []

    def callback(watch: int, fd: int, event: int, _opaque: Any) -> None:
        events.append((fd, event, threading.get_ident()))
        left.recv(100)

    try:
        watch = await _in_thread(impl._add_handle, left.fileno(),
                                 libvirt.VIR_EVENT_HANDLE_READABLE, callback, "opaque")
        right.send(b"x")
        await _until(lambda: bool(events))
        assert events[0] == (left.fileno(), libvirt.VIR_EVENT_HANDLE_READABLE,
                             threading.get_ident())
        await _in_thread(impl._update_handle, watch, 0)
        await asyncio.sleep(0.02)
        right.send(b"y")
        await asyncio.sleep(0.05)
        assert len(events) == 1  # no longer watched
        await _in_thread(impl._remove_handle, watch)
        await _until(lambda: freed == ["opaque"])
        assert impl.descriptors == {}
    finally:
        left.close()
        right.close()


async def test_calls_on_the_loop_thread_run_at_once(freed: list[Any]) -> None:
    impl = ThreadSafeAsyncIOImpl(asyncio.get_running_loop())
    timer = impl._add_timeout(-1, lambda *_: None, "o")
    assert timer < 1 << 30 and timer in impl.callbacks
    assert impl._remove_timeout(timer) == 0
    assert timer not in impl.callbacks


def test_a_closed_loop_refuses_adds_and_frees_on_remove(freed: list[Any]) -> None:
    loop = asyncio.new_event_loop()
    impl = ThreadSafeAsyncIOImpl(loop)
    timer = impl._add_timeout(-1, lambda *_: None, "kept")
    loop.close()
    assert impl._add_timeout(5, lambda *_: None, "new") == -1
    assert impl._remove_timeout(timer) == 0
    assert impl.is_idle()
    for _ in range(200):  # freed by a helper thread, never from inside the remove
        if freed:
            break
        time.sleep(0.005)
    assert freed == ["kept"]


async def test_ensure_event_impl_registers_once_per_process() -> None:
    first = eventloop.ensure_event_impl()
    assert eventloop.ensure_event_impl() is first
    assert libvirtaio.getCurrentImpl() is first
    assert first.loop is asyncio.get_running_loop()
