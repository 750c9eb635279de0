"""Fixtures for tests against a real Ray head (``pytest -m ray``); loaded by conftest.

The head comes from tools.testclusters.ray and is shared by the whole session:
starting one takes several seconds. Tests reach it over its Jobs REST API with
urllib only (``call``), as the conductor will, never through the ``ray`` package.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tools.testclusters.ray import RayHead


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """A Ray head on 127.0.0.1 with 2 CPUs and 2 (fake) GPUs, stopped after the session."""
    with RayHead(num_cpus=2, num_gpus=2) as head:
        print(f"ray head at {head.address} started in {head.start_seconds:.1f} s", file=sys.__stderr__)
        yield head
