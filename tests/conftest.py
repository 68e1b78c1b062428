"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.upstream import FakeUpstream, UpstreamFactory
from tests.harness import ProxyFactory, ProxyHarness


@pytest.fixture
async def upstream_factory() -> AsyncIterator[UpstreamFactory]:
    """`await make(name)` starts a FakeUpstream on a free port; all are closed at teardown."""
    started: list[FakeUpstream] = []

    async def make(name: str = "fake") -> FakeUpstream:
        upstream = FakeUpstream(name)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in reversed(started):
        await upstream.close()


@pytest.fixture
async def upstream(upstream_factory: UpstreamFactory) -> FakeUpstream:
    """One started FakeUpstream named "fake"."""
    return await upstream_factory()


@pytest.fixture
async def make_proxy() -> AsyncIterator[ProxyFactory]:
    """`await make_proxy(document, environ)` starts an in-process proxy on a free port."""
    started: list[ProxyHarness] = []

    async def make(doc: dict[str, Any], environ: dict[str, str] | None = None) -> ProxyHarness:
        harness = ProxyHarness(doc, environ)
        await harness.start()
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.close()
