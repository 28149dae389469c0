"""What a test needs from the machine: skip without it, but fail under CI=true, where
`make setup` must have installed everything."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def tool(name: str, package: str) -> str:
    """The path of `name`, or skip (fail under CI) naming the Debian package that has it."""
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} not found (Debian package {package}; `make setup` installs it)")
    return found
