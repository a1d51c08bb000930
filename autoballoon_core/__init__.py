"""autoballoon: automatic, event-driven virtio-balloon management for KVM hosts.

Everything a plugin author needs is importable from here: the ``hookimpl``
marker, the component base classes, the model, the settings helpers and sizes.
"""

from autoballoon_core.guard import current_target, under_pressure
from autoballoon_core.interfaces import (
    ActuatorError,
    Backend,
    EmitFn,
    Inventory,
    PluginContext,
    Policy,
    PressureSource,
    Register,
    SourceUnavailable,
)
from autoballoon_core.model import (
    FALL_RATE_READING,
    Decision,
    Escalation,
    GiB,
    GuestId,
    GuestInfo,
    GuestState,
    GuestStats,
    HostState,
    MiB,
    PressureEvent,
    PressureLevel,
    RoundRecord,
    Snapshot,
    Trigger,
    TriggerKind,
)
from autoballoon_core.options import (
    NoSettings,
    Section,
    duration,
    flag,
    integer,
    level,
    number,
    parse_duration,
    parse_size,
    settings,
    size,
    strings,
    text,
)
from autoballoon_core.plugins import hookimpl

# One version for the whole distribution, written once: in the guest agent's file,
# because that file is copied into guests on its own and must carry it itself.
from autoballoon_guest.agent import __version__

__all__ = [
    "FALL_RATE_READING",
    "ActuatorError",
    "Backend",
    "Decision",
    "EmitFn",
    "Escalation",
    "GiB",
    "GuestId",
    "GuestInfo",
    "GuestState",
    "GuestStats",
    "HostState",
    "Inventory",
    "MiB",
    "NoSettings",
    "PluginContext",
    "Policy",
    "PressureEvent",
    "PressureLevel",
    "PressureSource",
    "Register",
    "RoundRecord",
    "Section",
    "Snapshot",
    "SourceUnavailable",
    "Trigger",
    "TriggerKind",
    "__version__",
    "current_target",
    "duration",
    "flag",
    "hookimpl",
    "integer",
    "level",
    "number",
    "parse_duration",
    "parse_size",
    "settings",
    "size",
    "strings",
    "text",
    "under_pressure",
]
