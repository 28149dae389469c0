"""Shared fixtures."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
from blockbuster import blockbuster_ctx

from tests.brokers import alertmanager, mosquitto  # noqa: F401 - session fixtures
from tests.sysmgr import SystemdUser, start_or_skip


@pytest.fixture(scope="session")
def systemd_user() -> Iterator[SystemdUser]:
    """A private `systemd --user` manager for the session; skips (fails under CI=true) if none."""
    mgr = start_or_skip()
    yield mgr
    mgr.stop()


@pytest.fixture(autouse=True)
def no_blocking_calls(request: pytest.FixtureRequest) -> Iterator[None]:
    """Async tests run under blockbuster: a blocking call on the event loop fails the test."""
    if not inspect.iscoroutinefunction(request.function):
        yield
        return
    with blockbuster_ctx("agent"):
        yield
