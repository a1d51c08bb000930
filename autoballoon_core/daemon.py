"""``autoballoond``: the host daemon.

Runs in the foreground and logs to stderr. SIGTERM/SIGINT stop it cleanly,
SIGHUP reloads the configuration (a bad new config is rejected and the old one
kept). Speaks sd_notify when ``NOTIFY_SOCKET`` is set.

Exit codes: 0 clean stop, 2 bad configuration or plugin, 3 a source or backend
could not start (nothing was touched).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoballoon_core import __version__, bootstrap
from autoballoon_core.access import GROUP_OPTIONS, AccessTable, Peer
from autoballoon_core.audit import AuditLog
from autoballoon_core.config import ConfigError, DaemonSettings
from autoballoon_core.control import CommandRefused, ControlServer
from autoballoon_core.engine import MAX_NAME, Engine
from autoballoon_core.notify import Notifier
from autoballoon_core.plugins import PluginError
from autoballoon_core.steering import MAX_DURATION, Refused

MAX_REASON = 200

log = logging.getLogger("autoballoon.daemon")

EXIT_CONFIG = 2
EXIT_START = 3


class _CannotStart(Exception):
    """A part of the daemon cannot start; the message says which and why."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="autoballoond", description="The autoballoon host daemon: watches memory pressure "
        "and sets the guests' balloons.")
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="main config file (default /etc/autoballoon/autoballoon.toml; "
                        "autoballoon.d/*.toml beside it are read too)")
    parser.add_argument("--dry-run", action="store_true",
                        help="decide and log, but never change a balloon")
    parser.add_argument("--control-socket", help="override [daemon] control_socket")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override [daemon] log_level")
    parser.add_argument("--release", action="store_true",
                        help="do not run: find the guests, give every managed one its memory "
                        "back in guarded steps within host headroom, and exit (for "
                        "ExecStopPost= after the daemon failed)")
    parser.add_argument("--version", action="version", version=f"autoballoond {__version__}")
    return parser.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    daemon: dict[str, Any] = {}
    if args.dry_run:
        daemon["dry_run"] = True
    if args.control_socket:
        daemon["control_socket"] = args.control_socket
    if args.log_level:
        daemon["log_level"] = args.log_level
    return {"daemon": daemon} if daemon else {}


def set_log_level(name: str) -> None:
    logging.getLogger("autoballoon").setLevel(name.upper())


class Daemon:
    def __init__(self, loaded: bootstrap.Loaded, path: Path | None,
                 overrides: dict[str, Any]) -> None:
        self.loaded = loaded
        self.path = path
        self.overrides = overrides
        self.notifier = Notifier()
        self.engine = Engine(loaded.config, loaded.manager, loaded.registry)
        self.audit: AuditLog | None = None
        self.metrics: Any = None
        self.control: ControlServer | None = None
        self._stop = asyncio.Event()
        self._release_on_exit = False
        self._closing = False
        """Set on a clean stop: give the guests their memory back (``[guard]``)."""
        self._reload_lock = asyncio.Lock()
        self.engine.notices.append(self._engine_notice)

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; 0 on a clean stop, :data:`EXIT_START` if a part fails.

        Everything opened here (signal handlers, the audit log, the metrics
        endpoint, the engine's sources and backends, the control socket, the
        watchdog and reload tasks) is entered into one
        :class:`contextlib.AsyncExitStack`, so it is closed in reverse order on
        every way out: a clean stop, a part that cannot start, or an exception.
        """
        async with contextlib.AsyncExitStack() as stack:
            try:
                await self._open(stack)
                self.notifier.ready(self._summary())
                log.info("autoballoond %s running: %s", __version__, self._summary())
                await self._stop.wait()
            except _CannotStart as exc:
                log.error("%s", exc)
                return EXIT_START
            finally:
                self._closing = True  # no reload starts while the parts close
            log.info("stopping")
            self.notifier.stopping()
            self._release_on_exit = self.engine.config.guard.release_on_exit
        return 0

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        """Open every part, each with its closing pushed onto ``stack``.

        Raises :class:`_CannotStart` for a part that cannot start; the stack
        then closes what was opened before it.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
            stack.callback(loop.remove_signal_handler, signum)
        # the group waits for its tasks when the stack closes it, after everything below
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        # SIGHUP is handled from the start (its default action would end the daemon);
        # the handler goes before the group closes, so no reload starts in a closed group
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup, tasks)
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)
        stack.callback(self._close_audit)
        self._open_audit(self.loaded.config.daemon)
        try:
            self.metrics = self._install_metrics()
        except (OSError, ImportError) as exc:
            raise _CannotStart(f"cannot serve metrics: {exc}") from exc
        stack.callback(self._close_metrics)
        # the engine's stop also closes what a failed start had opened already
        stack.push_async_callback(self._stop_engine)
        try:
            await self.engine.start()
        except Exception as exc:
            raise _CannotStart(f"cannot start: {exc}") from exc
        self.control = ControlServer(self.loaded.config.daemon.control_socket, {
            "ping": self._ping, "status": self._status, "explain": self._explain,
            "reload": self._reload_command, "hint": self._hint, "set": self._set,
            "manage": self._manage, "unmanage": self._unmanage, "pause": self._pause,
            "resume": self._resume,
        }, access=AccessTable.from_settings(self.loaded.config.daemon), refused=self._refused)
        stack.push_async_callback(self.control.stop)
        try:
            await self.control.start()
        except (OSError, RuntimeError, ValueError) as exc:
            raise _CannotStart(f"cannot open the control socket: {exc}") from exc
        if self.notifier.watchdog_interval:
            watchdog = tasks.create_task(self._watchdog(), name="watchdog")
            stack.callback(watchdog.cancel)  # before the group waits for its tasks

    def _on_sighup(self, tasks: asyncio.TaskGroup) -> None:
        if not self._closing:
            tasks.create_task(self.reload(), name="reload")

    async def _stop_engine(self) -> None:
        await self.engine.stop(release=self._release_on_exit)

    async def release(self, settle: float = 3.0) -> int:
        """One shot: adopt every guest as it is, release in guarded steps, exit.

        Balloons stay where a crashed daemon left them (the hypervisor holds the
        state); an operator, or the unit's ``ExecStopPost=``, runs this to give
        the guests their memory back without overcommitting the host.
        """
        try:
            await self.engine.start(sources=False)
        except Exception as exc:
            log.error("cannot start the backends: %s", exc)
            await self.engine.stop()
            return EXIT_START
        await asyncio.sleep(settle)  # backends find and report their guests
        guests = len(self.engine.guests)
        await self.engine.release()
        left = [g.id for g in self.engine.guests.values()
                if g.managed and g.reachable and g.actual_bytes < g.max_bytes]
        await self.engine.stop()
        log.info("release: %d guests found, %d below their maximum at the end%s", guests,
                 len(left), f" ({', '.join(left)})" if left else "")
        return 0

    def _install_metrics(self) -> Any:
        """Count through the hooks always; serve HTTP when ``[metrics] enabled``."""
        try:
            from autoballoon_core import metrics
        except ImportError:
            if self.loaded.config.metrics.enabled:
                raise
            return None
        return metrics.install(self.loaded.manager, self.engine, self.loaded.config.metrics)

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            from autoballoon_core import metrics

            metrics.uninstall(self.loaded.manager, self.metrics)
            self.metrics = None

    def _summary(self) -> str:
        config = self.engine.config
        return (f"policy {config.policy}, sources {', '.join(config.sources) or 'none'}, "
                f"backends {', '.join(config.backends)}, {len(self.engine.guests)} guests"
                + (", DRY RUN" if self.engine.dry_run else "")
                + (", PAUSED" if self.engine.paused else ""))

    def _close_audit(self) -> None:
        if self.audit is not None:
            self.loaded.manager.unregister(self.audit)
            self.audit.close()
            self.audit = None

    def _open_audit(self, settings: DaemonSettings) -> None:
        path = settings.audit_log
        if self.audit is not None:
            if str(self.audit.path) == path:
                self.audit.configure(settings)  # new limits; reopened (logrotate's SIGHUP)
                return
            self._close_audit()
        if path:
            self.audit = AuditLog(path, settings)
            self.loaded.manager.register(self.audit, name="audit-log")

    async def reload(self) -> dict[str, Any]:
        async with self._reload_lock:
            if self._closing:
                return {"reloaded": False, "error": "the daemon is stopping"}
            self.notifier.reloading()
            try:
                config = bootstrap.reload(self.loaded, self.path, overrides=self.overrides)
                old = self.engine.config
                for section in ("sources", "backends", "block", "metrics"):
                    if getattr(config, section) != getattr(old, section):
                        log.warning("reload: changes to %s take effect after a restart", section)
                for key in ("control_socket", *GROUP_OPTIONS):
                    if getattr(config.daemon, key) != getattr(old.daemon, key):
                        log.warning("reload: [daemon] %s takes effect after a restart", key)
                self.engine.apply_config(config)
                self._open_audit(config.daemon)
                set_log_level(config.daemon.log_level)
            except (ConfigError, PluginError) as exc:
                log.error("reload rejected, keeping the running configuration: %s", exc)
                return {"reloaded": False, "error": str(exc)}
            except Exception as exc:
                log.exception("reload failed, keeping the running configuration")
                return {"reloaded": False, "error": str(exc)}
            finally:
                self.notifier.ready(self._summary())
            log.info("configuration reloaded: %s", self._summary())
            return {"reloaded": True}

    async def _watchdog(self) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_interval)

    async def _ping(self, _request: dict[str, Any], _peer: Peer) -> dict[str, Any]:
        return {"pong": True}

    async def _status(self, _request: dict[str, Any], _peer: Peer) -> dict[str, Any]:
        status = self.engine.status()
        status["recent"] = [_round_summary(r) for r in list(self.engine.recent)[-10:]]
        return {"status": status}

    async def _explain(self, request: dict[str, Any], _peer: Peer) -> dict[str, Any]:
        guest = self._guest_of(request)
        return {"explain": self.engine.explain(guest)}

    async def _reload_command(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        result = await self.reload()
        self._audit_operator(peer, "reload", result=result)
        return result

    # -- operators' commands: each checked, done in the engine, audited ----------------

    def _audit_operator(self, peer: Peer | None, cmd: str, **fields: Any) -> None:
        who = peer.describe() if peer is not None else "unknown peer"
        log.info("operator %s: %s %s", who, cmd,
                 " ".join(f"{k}={v}" for k, v in fields.items() if k != "result"))
        if self.audit is not None:
            self.audit.operator({"cmd": cmd, **(peer.who() if peer else {}), **fields})

    def _refused(self, peer: Peer | None, cmd: str, error: str) -> None:
        self._audit_operator(peer, cmd, refused=error)

    def _engine_notice(self, notice: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.operator({"cmd": "engine", **notice})

    def _guest_of(self, request: dict[str, Any]) -> str:
        name = request.get("guest")
        if not isinstance(name, str) or not 0 < len(name) <= 2 * MAX_NAME:
            raise CommandRefused("needs a string field guest (an id such as qmp:vm1, or a name)")
        try:
            return self.engine.core.resolve(name)
        except Refused as exc:
            raise CommandRefused(str(exc)) from None

    def _changing(self, peer: Peer, cmd: str, request: dict[str, Any], act: Any) -> Any:
        """Run ``act()``; audit the change or its refusal, with who asked."""
        guest = request.get("guest") if isinstance(request.get("guest"), str) else None
        try:
            result = act()
        except (Refused, CommandRefused) as exc:
            self._audit_operator(peer, cmd, guest=guest, refused=str(exc))
            raise CommandRefused(str(exc)) from None
        self._audit_operator(peer, cmd, guest=guest, result=result)
        return result

    async def _set(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        def act() -> dict[str, Any]:
            guest = self._guest_of(request)
            size = request.get("size")
            if size == "auto":
                had = self.engine.core.clear_manual(guest, peer.describe(),
                                                    self.engine.clock())
                return {"guest": guest, "auto": True, "had_manual": had}
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise CommandRefused(f"size {size!r}: expected a positive number of bytes "
                                     "or \"auto\"")
            duration = request.get("for")
            if duration is not None and (isinstance(duration, bool) or not isinstance(
                    duration, int | float) or not math.isfinite(duration)
                    or not 0 < duration <= MAX_DURATION):
                raise CommandRefused(f"for {duration!r}: expected seconds, more than 0 and "
                                     f"at most {MAX_DURATION:g}")
            done = self.engine.set_manual(guest, size, None if duration is None
                                          else float(duration), peer.describe())
            return {"guest": guest, "target": size, "for": duration, **done}
        return {"set": self._changing(peer, "set", request, act)}

    async def _manage(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"manage": self._managed(request, peer, True)}

    async def _unmanage(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"unmanage": self._managed(request, peer, False)}

    def _managed(self, request: dict[str, Any], peer: Peer, managed: bool) -> dict[str, Any]:
        def act() -> dict[str, Any]:
            guest = self._guest_of(request)
            changed = self.engine.core.set_managed(guest, managed, peer.describe(),
                                                   self.engine.clock())
            return {"guest": guest, "managed": managed, "changed": changed}
        result: dict[str, Any] = self._changing(
            peer, "manage" if managed else "unmanage", request, act)
        return result

    async def _pause(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        def act() -> dict[str, Any]:
            reason = request.get("reason", "")
            if not isinstance(reason, str) or len(reason) > MAX_REASON:
                raise CommandRefused(f"reason: expected a string of at most {MAX_REASON} "
                                     "characters")
            changed = self.engine.core.pause(peer.describe(), reason, self.engine.clock())
            if changed:
                log.warning("PAUSED by %s%s: decisions are logged, no balloon is changed",
                            peer.describe(), f" ({reason})" if reason else "")
            return {"paused": True, "changed": changed}
        return {"pause": self._changing(peer, "pause", request, act)}

    async def _resume(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        def act() -> dict[str, Any]:
            changed = self.engine.resume()
            if changed:
                log.warning("resumed by %s: acting again", peer.describe())
            return {"paused": False, "changed": changed}
        return {"resume": self._changing(peer, "resume", request, act)}

    async def _hint(self, request: dict[str, Any], _peer: Peer) -> dict[str, Any]:
        backend, name, event = (request.get(k) for k in ("backend", "name", "event"))
        if not all(isinstance(v, str) for v in (backend, name, event)):
            raise ValueError("hint needs string fields backend, name and event")
        assert isinstance(backend, str) and isinstance(name, str) and isinstance(event, str)
        if not 0 < len(name) <= MAX_NAME or any(c in name for c in "\0\n/"):
            raise ValueError("bad guest name")
        return {"hint": self.engine.hint(backend, name, event)}


def _round_summary(record: Any) -> dict[str, Any]:
    return {
        "trigger": record.trigger.kind.value,
        "level": record.trigger.level.name.lower(),
        "events": len(record.trigger.events),
        "actions": [
            {"guest": a.guest, "target": a.target, "previous": a.previous,
             "outcome": a.outcome.value, "reason": a.reason, "error": a.error}
            for a in record.actions
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = overrides_from(args)
    try:
        loaded = bootstrap.load(args.config, overrides=overrides)
    except (ConfigError, PluginError) as exc:
        print(f"autoballoond: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    set_log_level(loaded.config.daemon.log_level)
    daemon = Daemon(loaded, args.config, overrides)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(daemon.release() if args.release else daemon.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
