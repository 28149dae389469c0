"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sysmgr import SystemdUser, start_or_skip


@pytest.fixture(scope="session")
def systemd_user() -> Iterator[SystemdUser]:
    """A private `systemd --user` manager for the session; skips (fails under CI=true) if none."""
    mgr = start_or_skip()
    yield mgr
    mgr.stop()
