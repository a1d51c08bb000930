"""Load and validate the TOML configuration completely, before anything acts.

Files: the main file (default ``/etc/autoballoon/autoballoon.toml``) and then
every ``autoballoon.d/*.toml`` beside it in name order; a later file overrides
single keys of an earlier one. Every error names the file, the key, the value
and what is allowed.
"""

from __future__ import annotations

import fnmatch
import grp
import logging
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autoballoon_core.engine_core import EngineSettings, EscalationSettings
from autoballoon_core.guard import GuardSettings
from autoballoon_core.interfaces import Registered
from autoballoon_core.model import GuestId
from autoballoon_core.options import (
    Kind,
    Option,
    OptionError,
    S,
    Section,
    defaults,
    flag,
    integer,
    internal,
    number,
    options_of,
    size,
    strings,
    text,
)
from autoballoon_core.plugins import Registry

DEFAULT_PATH = Path("/etc/autoballoon/autoballoon.toml")
DROPIN_DIR_NAME = "autoballoon.d"
BUILTIN_FILE = "<defaults>"

RENAMED_SECTIONS: dict[str, str] = {"guards": "guard"}
"""Old section name -> new one: still read, with a warning naming the file."""

log = logging.getLogger(__name__)


WHOLE_FILE = "-"
"""The key of a ConfigError about a whole file (missing, unreadable, not TOML)."""


class ConfigError(ValueError):
    """The configuration cannot be used; ``str()`` is the operator's message."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {message}" if key == WHOLE_FILE else
                         f"{file}: {key}: {message}")
        self.file = file
        self.key = key


@dataclass(frozen=True, slots=True)
class DaemonSettings(Section):
    """``[daemon]``: the control socket, the audit log, logging."""

    control_socket: str = text("/run/autoballoon/control.sock",
                               "Path of the control socket (created with mode 0600).")
    control_socket_group: str = text(
        "", "Group whose members may send `ping` and `hint` (e.g. `kvm` for oVirt's VDSM "
        "hooks). Empty: none.")
    control_read_group: str = text(
        "", "Group whose members may use the read-only commands: `ping`, `status`, "
        "`explain` (monitoring, hook scripts). Empty: none.")
    control_admin_group: str = text(
        "", "Group whose members may use every command, the changing ones too (`set`, "
        "`manage`, `unmanage`, `pause`, `resume`, `reload`). Empty: root and the "
        "daemon's user only. One group among the three: the socket is that group's with "
        "mode 0660; several: mode 0666, each command checked against the peer's "
        "credentials.")
    audit_log: str = text(
        "", "JSON-lines audit log of every event and decision; empty: none. Reopened when "
        "moved away (logrotate) and on SIGHUP.")
    audit_rate: float = number(
        20.0, "Audit records per second of each kind (event, round) at most, on average; the "
        "excess is counted in a `suppressed` record.", minimum=0.1, maximum=100000.0)
    audit_burst: int = integer(200, "Audit records of each kind allowed in a burst.",
                               minimum=1, maximum=1000000)
    log_level: str = text("info", "Logging threshold.",
                          choices=("debug", "info", "warning", "error"))
    dry_run: bool = flag(False, "Decide and log, but never set a balloon.")


@dataclass(frozen=True, slots=True)
class HostSettings(Section):
    """``[host]``: where host memory is measured."""

    memory_cgroup: str = text(
        "", "Measure host memory in this cgroup (limit and usage) instead of /proc/meminfo; "
        "for hosts whose guests live in a memory-limited cgroup.")


@dataclass(frozen=True, slots=True)
class MetricsSettings(Section):
    """``[metrics]``: the Prometheus endpoint."""

    enabled: bool = flag(False, "Serve Prometheus metrics over HTTP.")
    address: str = text(
        "127.0.0.1",
        "Address the metrics endpoint binds to (loopback by default; it has no auth).")
    port: int = integer(9638, "TCP port of the metrics endpoint.", minimum=1, maximum=65535)


@dataclass(frozen=True, slots=True)
class PluginSettings(Section):
    """``[plugins]``: what not to load."""

    block: list[str] = strings(
        [], "Plugins (entry-point or built-in module names) or components (source, backend "
        "or policy names) not to load.")


@dataclass(frozen=True, slots=True)
class GuestOverride(Section):
    """``[guests."PATTERN"]``: settings for guests whose id or name matches ``pattern``
    (fnmatch)."""

    pattern: str = internal()
    floor: int | None = size(None, "Floor of matching guests.")
    weight: float | None = number(None, "Share weight of matching guests.",
                                  minimum=0.0, maximum=1000.0)
    managed: bool | None = flag(None, "false: never touch matching guests.")

    def matches(self, guest_id: GuestId, name: str) -> bool:
        return fnmatch.fnmatchcase(guest_id, self.pattern) or fnmatch.fnmatchcase(
            name, self.pattern
        )


ENABLED = Option("enabled", Kind.BOOL, False, "Turn this component on.")

SECTIONS: dict[str, type[Section]] = {
    "daemon": DaemonSettings,
    "engine": EngineSettings,
    "guard": GuardSettings,
    "escalation": EscalationSettings,
    "host": HostSettings,
    "metrics": MetricsSettings,
    "plugins": PluginSettings,
}
"""Every fixed section and its schema, in the order the reference lists them."""
_TABLE_SECTIONS = ("sources", "backends", "policies", "guests")


@dataclass(frozen=True, slots=True)
class Config:
    """A validated configuration: every section an instance of its schema."""

    files: tuple[str, ...]
    daemon: DaemonSettings
    engine: EngineSettings
    guard: GuardSettings
    host: HostSettings
    metrics: MetricsSettings
    block: tuple[str, ...]
    sources: Mapping[str, Section]
    """The enabled sources' settings, by name."""
    backends: Mapping[str, Section]
    """The enabled backends' settings, by name."""
    policy: str
    policy_options: Section
    """The active policy's settings."""
    guests: tuple[GuestOverride, ...] = field(default=())
    escalation: EscalationSettings = field(default_factory=EscalationSettings)

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

    def merge(self, table: Mapping[str, Any], file: str) -> None:
        self._merge_into(self.data, _renamed(table, file), file, "")

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


def _renamed(table: Mapping[str, Any], file: str) -> Mapping[str, Any]:
    """``table`` with its deprecated section names replaced, each one warned about."""
    renamed = dict(table)
    for old, new in RENAMED_SECTIONS.items():
        if old not in renamed:
            continue
        if new in renamed:
            raise ConfigError(file, old, f"[{old}] is the deprecated name of [{new}]; "
                              f"this file has both: move the keys of [{old}] into [{new}]")
        log.warning("%s: [%s] is deprecated, write [%s] (same keys); the old name is still "
                    "read for now", file, old, new)
        renamed[new] = renamed.pop(old)
    return renamed


def config_files(path: Path | None = None) -> list[Path]:
    """The main file and its drop-ins, in the order they apply."""
    main = path if path is not None else DEFAULT_PATH
    files = [main]
    dropins = main.parent / DROPIN_DIR_NAME
    if dropins.is_dir():
        files.extend(sorted(dropins.glob("*.toml")))
    return files


def read_raw(paths: Sequence[Path]) -> _Raw:
    """Every file parsed and merged in order; ConfigError for one that cannot be read."""
    raw = _Raw()
    for path in paths:
        try:
            with path.open("rb") as handle:
                table = tomllib.load(handle)
        except FileNotFoundError:
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
    values = _validate_section(raw, "plugins", section, options_of(PluginSettings))
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
    raw: _Raw, kind: str, specs: Mapping[str, Registered[Any]]
) -> dict[str, Section]:
    """Validate ``[<kind>.<name>]`` tables; return the enabled components' settings."""
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
    enabled: dict[str, Section] = {}
    for name, spec in specs.items():
        options = (ENABLED, *spec.options) if kind != "policies" else spec.options
        values = _validate_section(raw, f"{kind}.{name}", tables.get(name, {}), options)
        if kind == "policies":
            enabled[name] = spec.component.schema(**values)
            continue
        is_on = values.pop("enabled") if name in tables and "enabled" in tables[name] else (
            spec.enabled_by_default
        )
        values.pop("enabled", None)
        if is_on:
            enabled[name] = spec.component.schema(**values)
    return enabled


def _guest_overrides(raw: _Raw) -> tuple[GuestOverride, ...]:
    tables = raw.data.get("guests", {})
    if not isinstance(tables, dict):
        raise ConfigError(raw.where("guests"), "guests", "must be a table of tables")
    overrides = []
    for pattern, table in tables.items():
        values = _validate_section(raw, f'guests."{pattern}"', table,
                                   options_of(GuestOverride))
        overrides.append(GuestOverride(pattern=pattern, **values))
    return tuple(overrides)


def _check_groups(raw: _Raw, daemon: DaemonSettings) -> None:
    """Every ``[daemon] control_*_group`` names a group of this host."""
    for key in ("control_socket_group", "control_read_group", "control_admin_group"):
        name = getattr(daemon, key)
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
        if key not in SECTIONS and key not in _TABLE_SECTIONS:
            allowed = ", ".join([*SECTIONS, *_TABLE_SECTIONS])
            raise ConfigError(raw.where(key), key, f"unknown section (allowed: {allowed})")
    fixed = {
        name: schema(**_validate_section(raw, name, raw.data.get(name, {}), options_of(schema)))
        for name, schema in SECTIONS.items()
    }
    daemon = _section(fixed, "daemon", DaemonSettings)
    _check_groups(raw, daemon)
    engine = replace(_section(fixed, "engine", EngineSettings), dry_run=daemon.dry_run)
    policy = engine.policy
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
        daemon=daemon,
        engine=engine,
        guard=_section(fixed, "guard", GuardSettings),
        host=_section(fixed, "host", HostSettings),
        metrics=_section(fixed, "metrics", MetricsSettings),
        block=tuple(_section(fixed, "plugins", PluginSettings).block),
        sources=sources,
        backends=backends,
        policy=policy,
        policy_options=policies[policy],
        guests=_guest_overrides(raw),
        escalation=_section(fixed, "escalation", EscalationSettings),
    )


def _section(fixed: Mapping[str, Section], name: str, schema: type[S]) -> S:
    section = fixed[name]
    assert isinstance(section, schema)
    return section
