"""Shared test set-up: keep objkit's caches inside pytest's temporary directory."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_objkit_cache(tmp_path_factory):
    previous = os.environ.get("OBJKIT_CACHE")
    os.environ["OBJKIT_CACHE"] = str(tmp_path_factory.mktemp("objkit-cache"))
    yield
    if previous is None:
        os.environ.pop("OBJKIT_CACHE", None)
    else:
        os.environ["OBJKIT_CACHE"] = previous
