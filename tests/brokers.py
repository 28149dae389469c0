"""Real mosquitto and Alertmanager (Debian packages) for tests, on free ports with temp state.

Missing binaries skip the test, except under CI=true, where they fail it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.agentproc import free_port, wait_until
from tests.needs import tool, unavailable

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
USER, PASSWORD = "setpoint", "pw-Zq81-never-logged"


def need(binary: str, package: str) -> None:
    """Skip (fail under CI=true) when `binary` is missing."""
    if not Path(binary).exists():
        unavailable(f"{binary} not installed (Debian package {package}; `make setup` installs it)")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    """A mosquitto broker: `port` anonymous, `auth_port` with a password file (USER/PASSWORD)."""

    def __init__(self, workdir: Path, *, persistence: bool = False, tls: bool = False) -> None:
        need(MOSQUITTO, "mosquitto")
        need(MOSQUITTO_PASSWD, "mosquitto")
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.port, self.auth_port = free_port(), free_port()
        passwd = workdir / "passwd"
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", "-c", str(passwd), USER, PASSWORD], check=True, timeout=10
        )
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"user root\nper_listener_settings true\npersistence {str(persistence).lower()}\n"
            f"persistence_location {workdir}/\nlog_dest stderr\nlog_type all\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.auth_port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {passwd}\n"
        )
        self.tls_port = 0
        self.ca_file = workdir / "ca.pem"
        if tls:
            self.tls_port = free_port()
            make_certificates(workdir)
            with self.conf.open("a") as conf:
                conf.write(
                    f"listener {self.tls_port} 127.0.0.1\nallow_anonymous true\n"
                    f"cafile {self.ca_file}\ncertfile {workdir}/server.pem\n"
                    f"keyfile {workdir}/server.key\n"
                )
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        ports = [p for p in (self.port, self.auth_port, self.tls_port) if p]
        wait_until(lambda: all(_listening(p) for p in ports), 10, "mosquitto")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: persistent sessions are saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def make_certificates(workdir: Path) -> None:
    """A throw-away CA (ca.pem) and a server certificate for 127.0.0.1 (server.pem/.key)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ext = workdir / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    binary = tool("openssl", "openssl")

    def openssl(*args: str) -> None:
        subprocess.run([binary, *args], cwd=workdir, check=True, capture_output=True)

    ca = ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=setpoint CA"]
    openssl("req", "-x509", *ec, *ca)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]
    openssl("x509", "-req", "-in", "server.csr", *sign, "-out", "server.pem", "-extfile", str(ext))


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Watcher:
    """A paho subscriber in its own thread, recording every message."""

    def __init__(
        self, port: int, *topics: str, client_id: str = "", persistent: bool = False
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent
        )
        self.client.on_message = self._on_message
        self.topics = topics
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *_args: object) -> None:
        for topic in self.topics:
            client.subscribe(topic, qos=1)

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.retain, time.time()))

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def last(self, topic: str) -> Received | None:
        found = self.on(topic)
        return found[-1] if found else None

    def payload(self, topic: str) -> bytes | None:
        """The last payload on `topic`, if any."""
        found = self.last(topic)
        return found.payload if found is not None else None

    def doc(self, topic: str) -> Any:
        """The last payload on `topic` as JSON (None when nothing came)."""
        found = self.last(topic)
        return found.json() if found is not None else None

    def wait(self, topic: str, timeout: float, what: str = "") -> Received:
        wait_until(lambda: bool(self.on(topic)), timeout, what or f"a message on {topic}")
        found = self.last(topic)
        assert found is not None
        return found

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish(port: int, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
    """One message from a short-lived anonymous client."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


class PostRecorder:
    """An HTTP server recording every POST (headers, body); answers `status`."""

    def __init__(self, port: int, status: int = 200) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        posts, answer = self.posts, status

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[Any]:
        return [json.loads(body) for _headers, body in list(self.posts)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """prometheus-alertmanager with a webhook receiver (send_resolved) at `receiver_port`."""

    def __init__(self, workdir: Path) -> None:
        need(ALERTMANAGER, "prometheus-alertmanager")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.receiver_port = free_port(), free_port()
        conf = workdir / "alertmanager.yml"
        conf.write_text(
            "route:\n  receiver: hook\n  group_by: [alertname, host]\n  group_wait: 0s\n"
            "  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n"
            "    webhook_configs:\n"
            f"      - url: http://127.0.0.1:{self.receiver_port}/\n        send_resolved: true\n"
        )
        self.receiver = PostRecorder(self.receiver_port)
        self.log = workdir / "alertmanager.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [ALERTMANAGER, f"--config.file={conf}", f"--storage.path={workdir}/data",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(self._ready, 20, "Alertmanager to be ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """GET /api/v2/alerts (active ones) with these labels."""
        query = "&".join(f"filter={k}%3D%22{v}%22" for k, v in labels.items())
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=5) as resp:
            found: list[dict[str, Any]] = json.loads(resp.read())
        return found

    def notifications(self) -> list[dict[str, Any]]:
        """What Alertmanager sent its webhook receiver (one document per group notification)."""
        return [n for n in self.receiver.bodies() if isinstance(n, dict)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.receiver.close()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the test session."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """One Alertmanager for the test session."""
    am = Alertmanager(tmp_path_factory.mktemp("alertmanager"))
    yield am
    am.stop()
