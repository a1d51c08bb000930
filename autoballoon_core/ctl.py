"""``autoballoonctl``: talk to a running daemon, or check a configuration.

Looking: ``status`` (a table of host pressure and every guest), ``top`` (the
same, refreshing), ``explain GUEST`` (why the daemon did what it did to a
guest), ``ping``, ``plot`` (an audit log as a PNG), ``check-config``.
Steering: ``set GUEST SIZE [--for DURATION]`` and ``set GUEST auto``,
``manage GUEST``, ``unmanage GUEST``, ``pause``, ``resume``, ``reload``.
Exit codes: 0 fine, 1 daemon unreachable or command failed or refused, 2 bad
config.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autoballoon_core import bootstrap, configcheck, control
from autoballoon_core.config import DEFAULT_PATH, DROPIN_DIR_NAME, ConfigError, DaemonSettings
from autoballoon_core.options import OptionError, parse_duration, parse_size
from autoballoon_core.plugins import PluginError

DEFAULT_SOCKET = DaemonSettings().control_socket
LEVEL_STYLE = {"none": "green", "low": "yellow", "medium": "dark_orange", "critical": "bold red"}


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1048576:.0f}"


def _ballooned(guest: dict[str, Any]) -> int | None:
    if guest.get("max") is None or guest.get("actual") is None:
        return None
    return max(0, int(guest["max"]) - int(guest["actual"]))


def _level_age(status: dict[str, Any]) -> str:
    since, now = status["host"].get("level_since"), status.get("time")
    if isinstance(since, int | float) and isinstance(now, int | float) and now >= since:
        return f" for {now - since:.0f}s"
    return ""


def _after_level(status: dict[str, Any]) -> str:
    host = status["host"]
    text = _level_age(status)
    if host.get("mem_total"):
        text += f", available {_mib(host['mem_available'])}/{_mib(host['mem_total'])} MiB"
    return text


def host_line(status: dict[str, Any]) -> str:
    """The host's pressure level now (it falls back after a hold) and its memory."""
    return f"host pressure now {status['host']['level'].upper()}{_after_level(status)}"


def render(status: dict[str, Any]) -> Group:
    """The status as rich renderables: a host line and a guest table.

    ``ballooned`` is how far each balloon is inflated now (max - actual); ``last
    action`` / ``why`` describe only the last step, which may be small.
    """
    host = status["host"]
    level = host["level"]
    readings = ", ".join(f"{k}={v:g}" for k, v in sorted(host["readings"].items())[:6])
    head: Text | Group = Text.assemble(
        ("host pressure now ", "bold"), (level.upper(), LEVEL_STYLE.get(level, "")),
        _after_level(status),
        f"  policy {status['policy']}", ("  DRY RUN" if status["dry_run"] else "", "bold magenta"),
    )
    paused = status.get("paused")
    if paused:
        head = Group(head, Text(paused_line(paused), "bold white on red"))
    manual = status.get("manual") or {}
    table = Table(box=None, header_style="bold")
    numeric = {"max", "actual", "ballooned", "target", "floor"}
    for column in ("guest", "max", "actual", "ballooned", "target", "floor", "pressure",
                   "last action", "why (last action)"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for guest in sorted(status["guests"], key=lambda g: g["id"]):
        name = guest["id"] + ("" if guest["reachable"] else " (unreachable)") + (
            "" if guest.get("managed", True) else " (unmanaged)") + (
            f" (manual {_mib(manual[guest['id']]['target'])} MiB)" if guest["id"] in manual
            else "")
        age = guest["last_action_age"]
        action = guest["last_action"] + (f" {age:.0f}s ago" if age is not None else "")
        table.add_row(name, _mib(guest["max"]), _mib(guest["actual"]),
                      _mib(_ballooned(guest)), _mib(guest["target"]),
                      _mib(guest["floor"]), Text(guest["pressure"],
                                                 LEVEL_STYLE.get(guest["pressure"], "")),
                      action.strip() or "-", guest["last_reason"] or "-")
    counters = status["counters"]
    foot = Text(f"events {counters['events']}  rounds {counters['rounds']}  coalesced "
                f"{counters['coalesced']}  errors {counters['actuator_errors']}  timeouts "
                f"{counters['actuator_timeouts']}  readings: {readings or '-'}", style="dim")
    return Group(head, table, foot)


class NoDaemon(RuntimeError):
    """Nothing answers on the control socket."""

    def __init__(self, socket_path: str, exc: OSError) -> None:
        why = exc.strerror or str(exc)
        super().__init__(
            f"no daemon answers on {socket_path} ({why}). Start one with "
            f"`systemctl start autoballoon` or `autoballoond -c CONFIG`, or name the socket "
            f"of a running one with `autoballoonctl -s SOCKET` ([daemon] control_socket).")


def ask(socket_path: str, command: str) -> dict[str, Any]:
    """One request to the daemon; :class:`NoDaemon` when nothing listens."""
    try:
        return control.request(socket_path, command)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NoDaemon(socket_path, exc) from None


def plain(text: str) -> str:
    """``text`` without reStructuredText literal markup (for ``--help``)."""
    return re.sub(r"``([^`]*)``", r"\1", text)


def plain_line(status: dict[str, Any]) -> str:
    """The status on one line of plain text (for logs and pipes): host, then each guest."""
    guests = "; ".join(
        f"{g['id']} {_mib(g['actual'])}/{_mib(g['max'])} MiB"
        + (f" (ballooned {_mib(_ballooned(g))})" if _ballooned(g) else "")
        for g in sorted(status["guests"], key=lambda g: g["id"]))
    paused = status.get("paused")
    return (f"{paused_line(paused) + ' | ' if paused else ''}{host_line(status)} | "
            f"{guests or 'no guests'}")


def paused_line(paused: dict[str, Any]) -> str:
    reason = f" ({paused['reason']})" if paused.get("reason") else ""
    return (f"PAUSED for {paused['age']:.0f}s by {paused['who']}{reason}: decisions are "
            "logged, no balloon is changed (autoballoonctl resume)")


def fetch_status(socket_path: str) -> dict[str, Any]:
    reply = ask(socket_path, "status")
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "status failed"))
    status: dict[str, Any] = reply["status"]
    return status


def cmd_status(args: argparse.Namespace) -> int:
    status = fetch_status(args.socket)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        Console().print(render(status))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    console = Console()
    deadline = time.monotonic() + args.duration if args.duration else None
    with Live(console=console, refresh_per_second=4, screen=False) as live:
        while deadline is None or time.monotonic() < deadline:
            try:
                live.update(render(fetch_status(args.socket)))
            except NoDaemon as exc:
                live.update(Text(str(exc), "red"))
            except OSError as exc:
                live.update(Text(f"daemon not reachable at {args.socket}: {exc}", "red"))
            time.sleep(args.interval)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = bootstrap.load(args.config)
    except PluginError as exc:
        print(f"autoballoonctl: {exc}", file=sys.stderr)
        return 2
    except ConfigError as first:
        errors = configcheck.problems(args.config) or [first]
        for error in errors:
            print(f"autoballoonctl: {configcheck.message(error)}", file=sys.stderr)
        if errors[0].key == configcheck.NO_KEY and not Path(errors[0].file).exists():
            print(f"autoballoonctl: name the configuration with -c FILE (default {DEFAULT_PATH}); "
                  "docs/configuration.md lists every key", file=sys.stderr)
        if len(errors) > 1:
            print(f"autoballoonctl: {len(errors)} errors", file=sys.stderr)
        return 2
    config = loaded.config
    print(f"{', '.join(config.files)}: OK — policy {config.policy}, sources "
          f"{', '.join(config.sources) or 'none'}, backends {', '.join(config.backends)}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from autoballoon_core.plot import plot_audit

    plot_audit(args.log, args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    reply = ask(args.socket, "reload")
    if reply.get("ok") and reply.get("reloaded"):
        print("reloaded")
        return 0
    print(f"autoballoonctl: reload rejected: {reply.get('error')}", file=sys.stderr)
    return 1


def command(socket_path: str, cmd: str, **fields: Any) -> dict[str, Any]:
    """Send one command; its reply's fields, RuntimeError with the daemon's error."""
    try:
        reply = control.request(socket_path, cmd, **fields)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NoDaemon(socket_path, exc) from None
    except PermissionError as exc:
        raise RuntimeError(f"{socket_path}: {exc.strerror}: this user may not connect "
                           "([daemon] control_read_group, control_admin_group)") from None
    if not reply.get("ok"):
        raise RuntimeError(f"{cmd} refused: {reply.get('error', 'failed')}")
    return reply


def cmd_ping(args: argparse.Namespace) -> int:
    command(args.socket, "ping")
    print("pong")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"guest": args.guest}
    if args.size == "auto":
        if args.duration is not None:
            raise ValueError("--for goes with a size, not with auto")
        fields["size"] = "auto"
    else:
        try:
            fields["size"] = parse_size(args.size)
            if args.duration is not None:
                fields["for"] = parse_duration(args.duration)
        except OptionError as exc:
            raise ValueError(str(exc)) from None
    done = command(args.socket, "set", **fields)["set"]
    if done.get("auto"):
        print(f"{done['guest']}: back to the policy" if done["had_manual"] else
              f"{done['guest']}: had no manual target; the policy decides")
        return 0
    until = f" for {done['for']:g}s" if done.get("for") else " until `set GUEST auto`"
    if "step" in done:
        step = done["step"]
        now = (f"first step {_mib(step['previous'])} -> {_mib(step['target'])} MiB"
               + (" (not sent: paused or dry run)" if done.get("paused") else ""))
    elif "waiting" in done:
        now = f"no step now: {done['waiting']} (the next rounds try again)"
    else:
        now = "already there"
    print(f"{done['guest']}: manual target {_mib(done['target'])} MiB{until}; {now}")
    return 0


def cmd_managed(args: argparse.Namespace) -> int:
    done = command(args.socket, args.command, guest=args.guest)[args.command]
    state = "managed" if done["managed"] else "unmanaged"
    print(f"{done['guest']}: {state}" + ("" if done["changed"] else " (it already was)"))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    done = command(args.socket, "pause", reason=args.reason)["pause"]
    print("paused: decisions are logged, no balloon is changed" if done["changed"]
          else "already paused")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    done = command(args.socket, "resume")["resume"]
    print("resumed" if done["changed"] else "was not paused")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from autoballoon_core.explain import render_explain

    explained = command(args.socket, "explain", guest=args.guest)["explain"]
    if args.json:
        print(json.dumps(explained, indent=2, default=str))
    else:
        print(render_explain(explained, limit=args.last))
    return 0


def _steering_parsers(sub: Any) -> None:
    ping = sub.add_parser("ping", help="check that the daemon answers (read-only)")
    ping.set_defaults(func=cmd_ping)
    explain = sub.add_parser(
        "explain", help="why the daemon did what it did to a guest: its last decisions with "
        "the host's headroom, the guest's idle memory and the guard's verdict (read-only)")
    explain.add_argument("guest", help="the guest's id (qmp:vm1) or name (vm1)")
    explain.add_argument("--last", type=int, default=10, metavar="N",
                         help="show the last N decisions (default 10)")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(func=cmd_explain)
    set_ = sub.add_parser(
        "set", help="give a guest a manual balloon target that the policy leaves alone; "
        "it goes through the safety guard (floor, maximum, step limit, cooldown) like any "
        "decision. `set GUEST auto` hands the guest back to the policy")
    set_.add_argument("guest", help="the guest's id (qmp:vm1) or name (vm1)")
    set_.add_argument("size", help="the guest's memory, such as 1GiB or 768MiB (a bare "
                      "number is bytes), or auto")
    set_.add_argument("--for", dest="duration", metavar="DURATION",
                      help="keep it this long (such as 30min, 2h, 600); default: until "
                      "`set GUEST auto`")
    set_.set_defaults(func=cmd_set)
    for name, what in (("manage", "take a guest into automatic control (until the "
                        "daemon restarts; wins over the config)"),
                       ("unmanage", "take a guest out of automatic control: it is never "
                        "touched (until the daemon restarts; wins over the config)")):
        managed = sub.add_parser(name, help=what)
        managed.add_argument("guest", help="the guest's id (qmp:vm1) or name (vm1)")
        managed.set_defaults(func=cmd_managed)
    pause = sub.add_parser("pause", help="decide and log, but change no balloon (a "
                           "maintenance window); `status` says so until `resume`")
    pause.add_argument("--reason", default="", help="shown in status and the audit log")
    pause.set_defaults(func=cmd_pause)
    resume = sub.add_parser("resume", help="act again after `pause`")
    resume.set_defaults(func=cmd_resume)


def build_parser() -> argparse.ArgumentParser:
    """The command line: global options and one subcommand."""
    parser = argparse.ArgumentParser(
        prog="autoballoonctl", description=plain(__doc__.splitlines()[0]),
        epilog="Looking (status, top, explain, ping) needs root, the daemon's user or "
        "[daemon] control_read_group; steering (set, manage, unmanage, pause, resume, "
        "reload) root, the daemon's user or control_admin_group. Each change is an audit "
        "record naming who asked. Exit codes: 0 fine, 1 daemon unreachable or command "
        "failed or refused, 2 bad configuration.")
    parser.add_argument("-s", "--socket", default=DEFAULT_SOCKET,
                        help=f"the daemon's control socket (default {DEFAULT_SOCKET})")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="host pressure and every guest's balloon")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    top = sub.add_parser("top", help="a live, refreshing status view")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--duration", type=float, default=0.0, help="stop after N seconds")
    top.set_defaults(func=cmd_top)
    check = sub.add_parser("check-config", help="validate a configuration and exit")
    check.add_argument("-c", "--config", type=Path, default=None, metavar="FILE",
                       help=f"the main configuration file (default {DEFAULT_PATH}); its "
                       f"drop-ins in {DROPIN_DIR_NAME}/ beside it are checked too")
    check.set_defaults(func=cmd_check_config)
    reload = sub.add_parser("reload", help="make the daemon re-read its configuration")
    reload.set_defaults(func=cmd_reload)
    _steering_parsers(sub)
    plot = sub.add_parser("plot", help="draw an audit log: host pressure, balloons, actions")
    plot.add_argument("log", type=Path, help="the JSON-lines audit log ([daemon] audit_log)")
    plot.add_argument("-o", "--output", type=Path, default=Path("autoballoon.png"),
                      help="the PNG to write (default autoballoon.png)")
    plot.set_defaults(func=cmd_plot)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result: int = args.func(args)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"autoballoonctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
