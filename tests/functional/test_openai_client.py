"""The official `openai` client pointed at the proxy, as a user would: nothing else changed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.fakes.upstream import FakeUpstream, Reply, UpstreamFactory
from tests.harness import PROXY_KEY, ProxyHarness, document, provider


@pytest.fixture
async def proxy(
    upstream_factory: UpstreamFactory,
) -> AsyncIterator[tuple[ProxyHarness, FakeUpstream, FakeUpstream]]:
    premium = await upstream_factory("premium")
    backup = await upstream_factory("backup")
    harness = ProxyHarness(
        document(
            {
                "premium": provider(premium.base_url, tier=1, keys=["sk-p1"], models=["gpt-test"]),
                "backup": provider(backup.base_url, tier=2, keys=["sk-b1"], models=["gpt-test"]),
            }
        )
    )
    await harness.start()
    yield harness, premium, backup
    await harness.close()


def client_for(harness: ProxyHarness, key: str = PROXY_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=harness.base_url, api_key=key, max_retries=0)


async def test_non_stream_completion(
    proxy: tuple[ProxyHarness, FakeUpstream, FakeUpstream],
) -> None:
    harness, premium, _ = proxy
    async with client_for(harness) as client:
        completion = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.choices[0].message.content == "Hello from premium"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert premium.seen[0].key == "sk-p1"


async def test_stream_completion_with_failover(
    proxy: tuple[ProxyHarness, FakeUpstream, FakeUpstream],
) -> None:
    harness, premium, backup = proxy
    premium.default = Reply(429, json={"error": {"message": "rate limited"}})
    async with client_for(harness) as client:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = ""
        finish = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
    assert text == "Hello from backup"
    assert finish == "stop"
    assert len(premium.seen) == 1 and len(backup.seen) == 1


async def test_raw_response_headers_name_the_provider(
    proxy: tuple[ProxyHarness, FakeUpstream, FakeUpstream],
) -> None:
    harness, _, _ = proxy
    async with client_for(harness) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.headers["x-proxy-provider"] == "premium"
    assert raw.headers["x-proxy-tier"] == "1"


async def test_embeddings_and_models(
    proxy: tuple[ProxyHarness, FakeUpstream, FakeUpstream],
) -> None:
    harness, _, _ = proxy
    async with client_for(harness) as client:
        embedding = await client.embeddings.create(model="gpt-test", input="hello")
        models = [m.id async for m in client.models.list()]
    assert embedding.data and embedding.data[0].embedding
    assert "gpt-test" in models and "premium/gpt-test" in models


async def test_errors_map_to_the_client_exception_types(
    proxy: tuple[ProxyHarness, FakeUpstream, FakeUpstream],
) -> None:
    harness, premium, backup = proxy
    async with client_for(harness, key="wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}]
            )
    async with client_for(harness) as client:
        with pytest.raises(openai.NotFoundError) as not_found:
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
        assert not_found.value.code == "model_not_found"
        premium.default = Reply(429, json={"error": {"message": "slow"}})
        backup.default = Reply(429, json={"error": {"message": "slow"}})
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}]
            )
