"""Adapters / systemd: systemd's D-Bus names, unit object paths, and what its errors and job
results mean for us (retryable, permanent, not permitted). Pure."""

from __future__ import annotations

from typing import Literal

from agent.errors import NotPermitted, PermanentError, TransientError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
DBUS = "org.freedesktop.DBus"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"

JobOp = Literal["start", "stop", "restart", "kill"]
BusKind = Literal["system", "user"]

METHODS: dict[str, str] = {"start": "StartUnit", "stop": "StopUnit", "restart": "RestartUnit"}
MATCH_RULES = (
    f"type='signal',sender='{SYSTEMD}'",
    f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',arg0='{SYSTEMD}'",
)
# D-Bus errors where retrying cannot help; anything else is transient.
PERMANENT_ERRORS = frozenset(
    {
        "org.freedesktop.systemd1.NoSuchUnit",
        "org.freedesktop.systemd1.UnitMasked",
        "org.freedesktop.systemd1.LoadFailed",
        "org.freedesktop.systemd1.BadUnitSetting",
        "org.freedesktop.systemd1.JobTypeNotApplicable",
        "org.freedesktop.systemd1.OnlyByDependency",
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "org.freedesktop.DBus.Error.InvalidArgs",
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.NotSupported",
    }
)
SHUTDOWN_TARGETS = frozenset(
    {"shutdown.target", "reboot.target", "poweroff.target", "halt.target", "kexec.target",
     "soft-reboot.target", "rescue.target", "emergency.target", "exit.target"}
)  # fmt: skip
"""A job queued for one of these: the manager is taking the system (or all units) down; a user
manager's is exit.target."""
ALREADY_SUBSCRIBED = "org.freedesktop.systemd1.AlreadySubscribed"
# JobRemoved results: which ones end a job as a success, and which ones cannot improve.
JOB_OK = frozenset({"done", "skipped"})
JOB_PERMANENT = frozenset({"invalid", "unsupported", "once"})
DENIED = frozenset(
    {
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    }
)


def unit_path(name: str) -> str:
    """The object path of a unit, escaped like systemd's bus_label_escape (pure)."""
    if not name:
        return UNIT_PATH_PREFIX + "_"
    out = []
    for i, byte in enumerate(name.encode()):
        char = chr(byte)
        if char.isascii() and (char.isalpha() or (i > 0 and char.isdigit())):
            out.append(char)
        else:
            out.append(f"_{byte:02x}")
    return UNIT_PATH_PREFIX + "".join(out)


class ReplyError(Exception):
    """A D-Bus error reply (internal; converted before leaving the module)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def convert(err: ReplyError, what: str) -> PermanentError | TransientError:
    """The project error for a D-Bus error reply about `what` (e.g. "start web.service")."""
    if err.name in DENIED:
        return NotPermitted(f"{what}: {err.text} ({err.name})")
    cls = PermanentError if err.name in PERMANENT_ERRORS else TransientError
    return cls(f"{what}: {err.text} ({err.name})")


def job_outcome(unit: str, op: str, result: str, unit_failure_ok: bool = False) -> str:
    """Return the result of a finished job, or raise the error it stands for (pure).

    With `unit_failure_ok`, a start the unit itself failed ("failed") is a result too: the job
    ran; the unit's failure is observed (with systemd's reason) and the restart policy, not a
    retry of the job, decides what comes next.
    """
    if result in JOB_OK or (unit_failure_ok and result == "failed" and op != "stop"):
        return result
    cls = PermanentError if result in JOB_PERMANENT else TransientError
    raise cls(f"{op} {unit}: job finished with result '{result}'")
