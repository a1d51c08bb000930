"""Load and validate the TOML configuration completely, before anything acts.

Files: the main file (default ``/etc/autoballoon/autoballoon.toml``) and then
every ``autoballoon.d/*.toml`` beside it in name order; a later file overrides
single keys of an earlier one. Every error names the file, the key, the value
and what is allowed.
"""

from __future__ import annotations

import fnmatch
import grp
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoballoon_core.model import GuestId
from autoballoon_core.options import Kind, Option, OptionError, defaults
from autoballoon_core.plugins import Registry

DEFAULT_PATH = Path("/etc/autoballoon/autoballoon.toml")
DROPIN_DIR_NAME = "autoballoon.d"
BUILTIN_FILE = "<defaults>"


WHOLE_FILE = "-"
"""The key of a ConfigError about a whole file (missing, unreadable, not TOML)."""


class ConfigError(ValueError):
    """The configuration cannot be used; ``str()`` is the operator's message."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {message}" if key == WHOLE_FILE else
                         f"{file}: {key}: {message}")
        self.file = file
        self.key = key


DAEMON_OPTIONS: tuple[Option, ...] = (
    Option("control_socket", Kind.STR, "/run/autoballoon/control.sock",
           "Path of the control socket (created with mode 0600)."),
    Option("control_socket_group", Kind.STR, "",
           "Group whose members may send `ping` and `hint` (e.g. `kvm` for oVirt's VDSM "
           "hooks). Empty: none."),
    Option("control_read_group", Kind.STR, "",
           "Group whose members may use the read-only commands: `ping`, `status`, "
           "`explain` (monitoring, hook scripts). Empty: none."),
    Option("control_admin_group", Kind.STR, "",
           "Group whose members may use every command, the changing ones too (`set`, "
           "`manage`, `unmanage`, `pause`, `resume`, `reload`). Empty: root and the "
           "daemon's user only. One group among the three: the socket is that group's with "
           "mode 0660; several: mode 0666, each command checked against the peer's "
           "credentials."),
    Option("audit_log", Kind.STR, "",
           "JSON-lines audit log of every event and decision; empty: none. Reopened when "
           "moved away (logrotate) and on SIGHUP."),
    Option("audit_rate", Kind.FLOAT, 20.0,
           "Audit records per second of each kind (event, round) at most, on average; the "
           "excess is counted in a `suppressed` record.", minimum=0.1, maximum=100000.0),
    Option("audit_burst", Kind.INT, 200, "Audit records of each kind allowed in a burst.",
           minimum=1, maximum=1000000),
    Option("log_level", Kind.STR, "info", "Logging threshold.",
           choices=("debug", "info", "warning", "error")),
    Option("dry_run", Kind.BOOL, False, "Decide and log, but never set a balloon."),
)

ENGINE_OPTIONS: tuple[Option, ...] = (
    Option("policy", Kind.STR, "autoballoon", "The active policy, by name."),
    Option("coalesce_interval", Kind.DURATION, 1.0,
           "Host events within this interval after a round are merged; when it ends, one "
           "more round runs only if their highest level is above the last round's.",
           minimum=0.0, maximum=60.0),
    Option("tick_interval", Kind.DURATION, 5.0,
           "Period of the policy's timer rounds (memory give-back, slow policies).",
           minimum=0.1, maximum=3600.0),
    Option("actuator_timeout", Kind.DURATION, 2.0,
           "Longest wait for one balloon command.", minimum=0.01, maximum=120.0),
    Option("host_pressure_hold", Kind.DURATION, 5.0,
           "Host pressure counts as NONE after this long without a host event.",
           minimum=0.0, maximum=3600.0),
    Option("guest_pressure_hold", Kind.DURATION, 10.0,
           "A guest's pressure counts as gone after this long without a report.",
           minimum=0.0, maximum=3600.0),
)

GUARD_OPTIONS: tuple[Option, ...] = (
    Option("floor", Kind.SIZE, 256 * 1024**2,
           "No guest is ballooned below this much memory (per-guest overrides win)."),
    Option("floor_percent", Kind.FLOAT, 0.0,
           "Floor as a share of the guest's maximum; the larger floor wins.",
           minimum=0.0, maximum=1.0),
    Option("max_step", Kind.SIZE, 512 * 1024**2,
           "Largest change of one guest in one action.", minimum=4096),
    Option("min_change", Kind.SIZE, 1024**2,
           "Smaller changes are not worth a command.", minimum=0),
    Option("cooldown", Kind.DURATION, 0.5,
           "A guest is not acted on again sooner, unless its own pressure rises.",
           maximum=3600.0),
    Option("stall_timeout", Kind.DURATION, 15.0,
           "A balloon that has not moved half way to its target by then is stalled.",
           minimum=0.5, maximum=3600.0),
    Option("stall_backoff", Kind.DURATION, 60.0,
           "A stalled guest is left alone this long.", maximum=86400.0),
    Option("tolerance", Kind.SIZE, 2 * 1024**2,
           "Balloon sizes this close to the target count as reached.", minimum=0),
    Option("release_on_exit", Kind.BOOL, False,
           "On a clean stop, give every managed guest its maximum back, in guarded steps "
           "within host headroom."),
)

ESCALATION_OPTIONS: tuple[Option, ...] = (
    Option("enabled", Kind.BOOL, True,
           "Raise an escalation (hook, audit record, metric, status line, optional command) "
           "when the host stays short of memory and ballooning has nothing left to take."),
    Option("reserve", Kind.SIZE, 0,
           "Host MemAvailable below which the host counts as short, in bytes; the larger of "
           "reserve and reserve_percent wins."),
    Option("reserve_percent", Kind.FLOAT, 0.03,
           "Host MemAvailable below which the host counts as short, as a share of host "
           "memory.", minimum=0.0, maximum=0.9),
    Option("hold", Kind.DURATION, 1.0,
           "How long the host must stay short, with nothing being taken, before escalating.",
           minimum=0.0, maximum=3600.0),
    Option("repeat", Kind.DURATION, 60.0,
           "Least time between two escalations.", minimum=0.0, maximum=86400.0),
    Option("command", Kind.STR_LIST, [],
           "Command (argv list) run on each escalation with the escalation as JSON on its "
           "standard input; empty: none. It never blocks the engine."),
    Option("command_timeout", Kind.DURATION, 30.0,
           "The command is killed after this long.", minimum=0.1, maximum=3600.0),
)

HOST_OPTIONS: tuple[Option, ...] = (
    Option("memory_cgroup", Kind.STR, "",
           "Measure host memory in this cgroup (limit and usage) instead of /proc/meminfo; "
           "for hosts whose guests live in a memory-limited cgroup."),
)

METRICS_OPTIONS: tuple[Option, ...] = (
    Option("enabled", Kind.BOOL, False, "Serve Prometheus metrics over HTTP."),
    Option("address", Kind.STR, "127.0.0.1",
           "Address the metrics endpoint binds to (loopback by default; it has no auth)."),
    Option("port", Kind.INT, 9638, "TCP port of the metrics endpoint.", minimum=1,
           maximum=65535),
)

PLUGIN_OPTIONS: tuple[Option, ...] = (
    Option("block", Kind.STR_LIST, [], "Plugins (entry-point names) not to load."),
)

GUEST_OPTIONS: tuple[Option, ...] = (
    Option("floor", Kind.SIZE, None, "Floor of matching guests."),
    Option("weight", Kind.FLOAT, None, "Share weight of matching guests.",
           minimum=0.0, maximum=1000.0),
    Option("managed", Kind.BOOL, None, "false: never touch matching guests."),
)

ENABLED = Option("enabled", Kind.BOOL, False, "Turn this component on.")

_FIXED_SECTIONS = {
    "daemon": DAEMON_OPTIONS,
    "engine": ENGINE_OPTIONS,
    "guards": GUARD_OPTIONS,
    "escalation": ESCALATION_OPTIONS,
    "host": HOST_OPTIONS,
    "metrics": METRICS_OPTIONS,
    "plugins": PLUGIN_OPTIONS,
}
_TABLE_SECTIONS = ("sources", "backends", "policies", "guests")


@dataclass(frozen=True, slots=True)
class GuestOverride:
    """Settings for guests whose id or name matches ``pattern`` (fnmatch)."""

    pattern: str
    floor: int | None = None
    weight: float | None = None
    managed: bool | None = None

    def matches(self, guest_id: GuestId, name: str) -> bool:
        return fnmatch.fnmatchcase(guest_id, self.pattern) or fnmatch.fnmatchcase(
            name, self.pattern
        )


@dataclass(frozen=True, slots=True)
class Config:
    """A validated configuration. Option values are parsed (sizes in bytes, seconds)."""

    files: tuple[str, ...]
    daemon: Mapping[str, Any]
    engine: Mapping[str, Any]
    guards: Mapping[str, Any]
    host: Mapping[str, Any]
    metrics: Mapping[str, Any]
    block: tuple[str, ...]
    sources: Mapping[str, Mapping[str, Any]]
    backends: Mapping[str, Mapping[str, Any]]
    policy: str
    policy_options: Mapping[str, Any]
    guests: tuple[GuestOverride, ...] = field(default=())
    escalation: Mapping[str, Any] = field(default_factory=dict)

    def guest_override(self, guest_id: GuestId, name: str) -> GuestOverride:
        """Every matching ``[guests."pattern"]`` table merged, later files winning."""
        merged: dict[str, Any] = {}
        for override in self.guests:
            if override.matches(guest_id, name):
                for key in ("floor", "weight", "managed"):
                    value = getattr(override, key)
                    if value is not None:
                        merged[key] = value
        return GuestOverride(pattern="*", **merged)


@dataclass(slots=True)
class _Raw:
    """Merged TOML with the file each leaf value came from."""

    data: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def merge(self, table: Mapping[str, Any], file: str, prefix: str = "") -> None:
        target = self.data
        for part in [p for p in prefix.split(".") if p] if prefix else []:
            target = target.setdefault(part, {})
        self._merge_into(target, table, file, prefix)

    def _merge_into(
        self, target: dict[str, Any], table: Mapping[str, Any], file: str, prefix: str
    ) -> None:
        for key, value in table.items():
            dotted = f"{prefix}{key}" if not prefix else f"{prefix}.{key}"
            if isinstance(value, dict):
                existing = target.get(key)
                if not isinstance(existing, dict):
                    existing = target[key] = {}
                self.origin.setdefault(dotted, file)
                self._merge_into(existing, value, file, dotted)
            else:
                target[key] = value
                self.origin[dotted] = file

    def where(self, dotted: str) -> str:
        return self.origin.get(dotted, BUILTIN_FILE)


def config_files(path: Path | None = None) -> list[Path]:
    """The main file and its drop-ins, in the order they apply."""
    main = path if path is not None else DEFAULT_PATH
    files = [main]
    dropins = main.parent / DROPIN_DIR_NAME
    if dropins.is_dir():
        files.extend(sorted(dropins.glob("*.toml")))
    return files


def read_raw(paths: Sequence[Path], *, main_optional: bool = False) -> _Raw:
    raw = _Raw()
    for index, path in enumerate(paths):
        try:
            with path.open("rb") as handle:
                table = tomllib.load(handle)
        except FileNotFoundError:
            if index == 0 and main_optional:
                continue
            raise ConfigError(str(path), WHOLE_FILE, "file not found") from None
        except OSError as exc:
            raise ConfigError(str(path), WHOLE_FILE, f"cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), WHOLE_FILE, f"not valid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(str(path), WHOLE_FILE, "not valid TOML: nested too deeply") from None
        try:
            raw.merge(table, str(path))
        except RecursionError:
            raise ConfigError(str(path), WHOLE_FILE, "tables nested too deeply") from None
    return raw


def blocked_plugins(raw: _Raw) -> tuple[str, ...]:
    """The block list, read before plugins load (it decides what loads)."""
    section = raw.data.get("plugins", {})
    values = _validate_section(raw, "plugins", section, PLUGIN_OPTIONS)
    return tuple(values["block"])


def _validate_section(
    raw: _Raw, dotted: str, section: object, options: Sequence[Option], *, extra: str = ""
) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(raw.where(dotted), dotted, "must be a table")
    by_name = {option.name: option for option in options}
    values = defaults(options)
    for key, value in section.items():
        full = f"{dotted}.{key}"
        option = by_name.get(key)
        if option is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise ConfigError(raw.where(full), full, f"unknown key{extra} (known keys: {known})")
        try:
            values[key] = option.parse(value)
        except OptionError as exc:
            message = f"{value!r} is not allowed: {exc} (allowed: {option.allowed()})"
            raise ConfigError(raw.where(full), full, message) from None
    return values


def _components(
    raw: _Raw, kind: str, specs: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Validate ``[<kind>.<name>]`` tables; return the enabled components' options."""
    tables = raw.data.get(kind, {})
    if not isinstance(tables, dict):
        raise ConfigError(raw.where(kind), kind, "must be a table of tables")
    for name in tables:
        if name not in specs:
            known = ", ".join(sorted(specs)) or "none loaded"
            raise ConfigError(
                raw.where(f"{kind}.{name}"), f"{kind}.{name}",
                f"no such {kind[:-1]} (available: {known})",
            )
    enabled: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        options = (ENABLED, *spec.options) if kind != "policies" else tuple(spec.options)
        values = _validate_section(raw, f"{kind}.{name}", tables.get(name, {}), options)
        if kind == "policies":
            enabled[name] = values
            continue
        is_on = values.pop("enabled") if name in tables and "enabled" in tables[name] else (
            spec.enabled_by_default
        )
        values.pop("enabled", None)
        if is_on:
            enabled[name] = values
    return enabled


def _guest_overrides(raw: _Raw) -> tuple[GuestOverride, ...]:
    tables = raw.data.get("guests", {})
    if not isinstance(tables, dict):
        raise ConfigError(raw.where("guests"), "guests", "must be a table of tables")
    overrides = []
    for pattern, table in tables.items():
        values = _validate_section(raw, f'guests."{pattern}"', table, GUEST_OPTIONS)
        overrides.append(GuestOverride(pattern=pattern, **values))
    return tuple(overrides)


def _check_groups(raw: _Raw, daemon: Mapping[str, Any]) -> None:
    """Every ``[daemon] control_*_group`` names a group of this host."""
    for key in ("control_socket_group", "control_read_group", "control_admin_group"):
        name = daemon[key]
        if not name:
            continue
        try:
            grp.getgrnam(name)
        except (KeyError, ValueError):  # ValueError: NUL or unencodable characters
            raise ConfigError(raw.where(f"daemon.{key}"), f"daemon.{key}",
                              f"no group named {name!r} on this host (allowed: an existing "
                              "group's name, or \"\" for none)") from None


def validate(raw: _Raw, registry: Registry, files: Sequence[str]) -> Config:
    """Check every key of every section; build the :class:`Config`."""
    for key in raw.data:
        if key not in _FIXED_SECTIONS and key not in _TABLE_SECTIONS:
            allowed = ", ".join([*_FIXED_SECTIONS, *_TABLE_SECTIONS])
            raise ConfigError(raw.where(key), key, f"unknown section (allowed: {allowed})")
    fixed = {
        name: _validate_section(raw, name, raw.data.get(name, {}), options)
        for name, options in _FIXED_SECTIONS.items()
    }
    _check_groups(raw, fixed["daemon"])
    policy = fixed["engine"]["policy"]
    if policy not in registry.policies:
        known = ", ".join(sorted(registry.policies)) or "none loaded"
        raise ConfigError(
            raw.where("engine.policy"), "engine.policy", f"{policy!r} is not a loaded policy "
            f"(available: {known})"
        )
    policies = _components(raw, "policies", registry.policies)
    sources = _components(raw, "sources", registry.sources)
    backends = _components(raw, "backends", registry.backends)
    if not backends:
        raise ConfigError(
            files[0] if files else BUILTIN_FILE, "backends",
            "no backend is enabled: set enabled = true in one of "
            + ", ".join(f"[backends.{name}]" for name in sorted(registry.backends)),
        )
    return Config(
        files=tuple(files),
        daemon=fixed["daemon"],
        engine=fixed["engine"],
        guards=fixed["guards"],
        host=fixed["host"],
        metrics=fixed["metrics"],
        block=tuple(fixed["plugins"]["block"]),
        sources=sources,
        backends=backends,
        policy=policy,
        policy_options=policies[policy],
        guests=_guest_overrides(raw),
        escalation=fixed["escalation"],
    )


def load(
    registry: Registry, paths: Sequence[Path], *, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Read ``paths`` (main file first) and validate them against ``registry``.

    ``overrides`` is a nested mapping merged last (command-line settings).
    """
    raw = read_raw(paths)
    if overrides:
        raw.merge(overrides, "<command line>")
    return validate(raw, registry, [str(p) for p in paths])
