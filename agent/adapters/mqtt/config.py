"""Adapters / mqtt: MQTT broker options of `setpoint run` and the checked configuration they make.

The password comes from `--mqtt-password-file` or $SETPOINT_MQTT_PASSWORD, never from argv or
the URL; once read, the variable is removed from the environment so that effects the agent
runs do not inherit it. `MqttConfig` keeps it out of repr().
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent.adapters.mqtt.commands import CommandPolicy
from agent.adapters.mqtt.discovery import DEFAULT_PREFIX
from agent.core.commands import COMMANDS

PASSWORD_ENV = "SETPOINT_MQTT_PASSWORD"  # noqa: S105 - the variable's name, not a secret


@dataclass(frozen=True)
class MqttConfig:
    """Where the broker is and how to talk to it; `password` never appears in repr()."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    commands: CommandPolicy | None = None
    keepalive: int = 30
    discovery: str | None = None
    """Home Assistant discovery prefix (None: no discovery configs)."""

    @property
    def where(self) -> str:
        """The broker's address for log lines (no credentials)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def configure(
    url: str,
    *,
    username: str | None = None,
    password_file: Path | None = None,
    ca_file: Path | None = None,
    commands: bool = False,
    allow: frozenset[str] = frozenset(),
    allow_services: frozenset[str] = frozenset(),
    env: Mapping[str, str] = os.environ,
) -> MqttConfig:
    """A checked MqttConfig from command-line options; ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {parts.scheme!r}")
    if parts.password is not None:
        raise ValueError(
            f"no password in the MQTT URL: use --mqtt-password-file or ${PASSWORD_ENV}"
        )
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError("MQTT URL must be mqtt[s]://HOST[:PORT]")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ValueError("MQTT URL has an invalid port") from None
    user = username or (unquote(parts.username) if parts.username else None)
    password = _password(password_file, env)
    if password is not None and user is None:
        raise ValueError("an MQTT password needs a username (--mqtt-username)")
    policy = None
    if commands:
        if user is None or password is None:
            raise ValueError("--mqtt-commands requires broker authentication (username+password)")
        if not allow:
            raise ValueError("--mqtt-commands requires --mqtt-allow COMMAND[,COMMAND...]")
        unknown = sorted(allow - set(COMMANDS))
        if unknown:
            raise ValueError(f"--mqtt-allow: unknown command(s) {', '.join(unknown)}")
        policy = CommandPolicy(allow, allow_services)
    return MqttConfig(
        parts.hostname, port, parts.scheme == "mqtts", user, password, ca_file, policy
    )


def _password(path: Path | None, env: Mapping[str, str]) -> str | None:
    if path is not None:
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as err:
            raise ValueError(f"cannot read the MQTT password file {path}: {err.strerror}") from None
    return env.get(PASSWORD_ENV) or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--mqtt-*` options (and `--hostname`) of `setpoint run`."""
    parser.add_argument(
        "--hostname", default="", help="this host's name in MQTT topics and alert labels"
    )
    group = parser.add_argument_group("MQTT (off unless --mqtt-url is given)")
    group.add_argument("--mqtt-url", metavar="mqtt[s]://HOST[:PORT]", help="the broker")
    group.add_argument("--mqtt-username", metavar="NAME")
    group.add_argument(
        "--mqtt-password-file", type=Path, metavar="FILE", help=f"or ${PASSWORD_ENV}"
    )
    group.add_argument("--mqtt-ca-file", type=Path, metavar="FILE", help="CA bundle for mqtts://")
    group.add_argument(
        "--mqtt-commands",
        action="store_true",
        help="accept commands on setpoint/<host>/commands (needs authentication and --mqtt-allow)",
    )
    group.add_argument(
        "--mqtt-allow", type=_names, default=frozenset(), metavar="CMD,...",
        help=f"commands allowed over MQTT ({', '.join(COMMANDS)})",
    )  # fmt: skip
    group.add_argument(
        "--mqtt-allow-services", type=_names, default=frozenset(), metavar="SERVICE,...",
        help="services MQTT commands may target ('*': all, and the whole agent)",
    )  # fmt: skip
    group.add_argument(
        "--mqtt-discovery", nargs="?", const=DEFAULT_PREFIX, default=None, metavar="PREFIX",
        help=f"publish Home Assistant discovery configs under PREFIX (default {DEFAULT_PREFIX})",
    )  # fmt: skip


def _names(text: str) -> frozenset[str]:
    return frozenset(n.strip() for n in text.split(",") if n.strip())


def from_args(
    args: argparse.Namespace, env: MutableMapping[str, str] = os.environ
) -> MqttConfig | None:
    """The configuration `args` ask for (None without --mqtt-url); ValueError when unusable."""
    if args.mqtt_url is None:
        for flag, given in (("commands", args.mqtt_commands),
                            ("discovery", args.mqtt_discovery is not None)):  # fmt: skip
            if given:
                raise ValueError(f"--mqtt-{flag} needs --mqtt-url")
        return None
    try:
        config = configure(
            args.mqtt_url,
            username=args.mqtt_username,
            password_file=args.mqtt_password_file,
            ca_file=args.mqtt_ca_file,
            commands=args.mqtt_commands,
            allow=args.mqtt_allow,
            allow_services=args.mqtt_allow_services,
            env=env,
        )
    finally:
        env.pop(PASSWORD_ENV, None)
    return _with_discovery(config, args.mqtt_discovery)


def _with_discovery(config: MqttConfig, prefix: str | None) -> MqttConfig:
    """`config` publishing Home Assistant discovery under `prefix` (a topic, no wildcards)."""
    if prefix is None:
        return config
    parts = [p for p in prefix.split("/") if p]
    if not parts or any(c in prefix for c in "+#\0"):
        raise ValueError(f"--mqtt-discovery: not a topic prefix: {prefix!r}")
    return replace(config, discovery="/".join(parts))
