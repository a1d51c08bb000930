"""``autoballoonctl explain``: a guest's recent decisions as a person reads them."""

from __future__ import annotations

from typing import Any

MiB = 1 << 20


def _mib(value: object) -> str:
    return "?" if not isinstance(value, int | float) else f"{value / MiB:.0f} MiB"


def _ago(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min ago"
    return f"{seconds / 3600:.1f}h ago"


def _host(host: dict[str, Any]) -> str:
    if not host:
        return ""
    text = f"host pressure {host.get('level', '?')}"
    if host.get("mem_available") is not None:
        text += f", available {_mib(host['mem_available'])} of {_mib(host.get('mem_total'))}"
    if host.get("headroom") is not None:
        text += (f", headroom {_mib(host['headroom'])} above the escalation reserve "
                 f"{_mib(host.get('reserve'))}")
    return text


def _guest(guest: dict[str, Any]) -> str:
    if not guest:
        return ""
    text = (f"guest at {_mib(guest.get('actual'))} of {_mib(guest.get('max'))} "
            f"(floor {_mib(guest.get('floor'))}), pressure {guest.get('pressure', '?')}")
    if guest.get("idle") is not None:
        text += (f", idle (MemAvailable) {_mib(guest['idle'])}, free {_mib(guest.get('free'))}"
                 f", caches {_mib(guest.get('caches'))}")
    else:
        text += ", no balloon statistics"
    return text


def _entry(entry: dict[str, Any]) -> list[str]:
    repeat = (f" (x{entry['count']}, last {_ago(entry.get('last_age'))})"
              if entry.get("count", 1) > 1 else "")
    if entry.get("origin") == "operator" and entry.get("wanted") is None:
        return [f"{_ago(entry.get('age'))}  operator: {entry['reason']} {entry['verdict']}"
                + repeat]
    move = ""
    if entry.get("previous") is not None and entry.get("target") is not None:
        move = f"  {_mib(entry['previous'])} -> {_mib(entry['target'])}"
        if entry.get("wanted") != entry.get("target"):
            move += f" (wanted {_mib(entry.get('wanted'))})"
    outcome = entry.get("outcome") or ""
    if entry.get("error"):
        outcome += f": {entry['error']}"
    round_ = ""
    if entry.get("trigger"):
        kind, _, level = str(entry["trigger"]).partition("/")
        round_ = f" ({kind} round, host {level})"
    lines = [f"{_ago(entry.get('age'))}  {entry.get('origin')} decision{round_}"
             + f"{move}  {outcome}{repeat}",
             f"    why: {entry.get('reason') or '-'}",
             f"    guard: {entry.get('verdict')}"]
    for figures in (_host(entry.get("host") or {}), _guest(entry.get("guest") or {})):
        if figures:
            lines.append(f"    {figures}")
    return lines


def render_explain(explained: dict[str, Any], limit: int = 10) -> str:
    """Plain text: the guest now, then its last ``limit`` decisions, newest first."""
    guest = explained["guest"]
    state = "managed" if guest.get("managed") else "NOT managed"
    if explained.get("managed_override") is not None:
        state += " (set by an operator)"
    lines = [f"{guest['id']}: actual {_mib(guest.get('actual'))} of {_mib(guest.get('max'))}, "
             f"target {_mib(guest.get('target')) if guest.get('target') is not None else 'none'}"
             f", floor {_mib(guest.get('floor'))}, {state}, policy {explained.get('policy')}"]
    manual = explained.get("manual")
    if manual:
        left = ("until `set GUEST auto`" if manual.get("remaining") is None
                else f"for {manual['remaining']:.0f}s more")
        lines.append(f"manual target {_mib(manual['target'])} set by {manual['who']} "
                     f"{_ago(manual.get('age'))}, {left}: the policy leaves it alone")
    if explained.get("paused"):
        lines.append("the daemon is PAUSED: decisions are logged, no balloon is changed")
    history = explained.get("history") or []
    if not history:
        lines.append("no decision about this guest yet")
        return "\n".join(lines)
    lines.append(f"last decisions, newest first ({min(limit, len(history))} of "
                 f"{len(history)} kept):")
    for entry in history[:max(0, limit)]:
        lines.extend("  " + line for line in _entry(entry))
    return "\n".join(lines)
