"""Reloads of a real proxy process (SPEC §10): SIGHUP, the file watcher, a Kubernetes
ConfigMap `..data` swap, an invalid file, key state carried across, and what the watcher
compares. See `tests/procs.py` for how it runs.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.lifecycle import file_identity
from tests.fakes.upstream import FakeUpstream, Reply, Stream, UpstreamFactory
from tests.fakes.upstream import chat_stream_events as stream_events
from tests.harness import chat
from tests.procs import (  # noqa: F401 - the fixtures
    AUTH,
    KEYS,
    ask,
    client_fixture,
    config_doc,
    configmap_volume,
    data_lines,
    metric,
    readyz,
    spawn_fixture,
    write_config,
)

pytestmark = pytest.mark.slow


# --- reload --------------------------------------------------------------------------------


async def test_sighup_reloads_a_new_routing_and_streams_in_flight_keep_theirs(
    tmp_path: Path,
    upstream_factory: UpstreamFactory,
    spawn: Any,
    client: aiohttp.ClientSession,
) -> None:
    first, second = await upstream_factory("first"), await upstream_factory("second")
    config = write_config(tmp_path / "providers.yaml", config_doc({"a": first}))
    proxy = await spawn(config)
    first.script(Stream(events=stream_events("gpt-test", ["one", "two"]), delay=0.2))

    async with client.post(
        proxy.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH
    ) as streaming:
        events = data_lines(streaming)
        received = [await anext(events)]
        write_config(config, config_doc({"b": second}))
        proxy.send(signal.SIGHUP)
        await proxy.wait_log(lambda line: line.get("trigger") == "SIGHUP")

        after = await ask(client, proxy)
        assert after.headers["x-proxy-provider"] == "b"
        assert len(second.seen) == 1

        received += [event async for event in events]
    # The stream that started on the old table finished on it.
    assert streaming.headers["x-proxy-provider"] == "a"
    assert received[-1] == b"[DONE]"
    assert len(first.seen) == 1
    assert await metric(client, proxy, 'llmproxy_config_reloads_total{result="ok"}') >= 1


async def test_configmap_symlink_swap_is_picked_up_by_the_watcher(
    tmp_path: Path,
    upstream_factory: UpstreamFactory,
    spawn: Any,
    client: aiohttp.ClientSession,
) -> None:
    first, second = await upstream_factory("first"), await upstream_factory("second")
    volume = tmp_path / "config"
    config = configmap_volume(volume, "2026_x", config_doc({"a": first}))
    proxy = await spawn(config)
    assert (await ask(client, proxy)).headers["x-proxy-provider"] == "a"

    configmap_volume(volume, "2026_y", config_doc({"b": second}))
    reloaded = await proxy.wait_log(lambda line: line.get("msg") == "reloaded")

    assert reloaded["trigger"] == "file change"
    assert (await ask(client, proxy)).headers["x-proxy-provider"] == "b"
    assert len(second.seen) == 1


async def test_keys_in_a_projected_dotenv_rotate_without_a_restart(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, client: aiohttp.ClientSession
) -> None:
    # A Secret projected as `.env` beside the table (not as environment variables, which
    # a running process cannot see change): a key rotation is a volume swap and a reload.
    doc = config_doc({"a": upstream})
    doc["providers"]["a"]["keys"] = ["${ROTATED_KEY}"]
    volume = tmp_path / "config"
    proxy = await spawn(configmap_volume(volume, "2026_x", doc, "ROTATED_KEY=sk-old-rotated\n"))
    assert (await ask(client, proxy)).status == 200

    configmap_volume(volume, "2026_y", doc, "ROTATED_KEY=sk-new-rotated\n")
    await proxy.wait_log(lambda line: line.get("msg") == "reloaded")
    assert (await ask(client, proxy)).status == 200

    assert [seen.key for seen in upstream.seen] == ["sk-old-rotated", "sk-new-rotated"]
    assert "rotated" not in proxy.stderr


async def test_invalid_new_file_keeps_the_old_table_and_counts_an_error(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, client: aiohttp.ClientSession
) -> None:
    config = write_config(tmp_path / "providers.yaml", config_doc({"a": upstream}))
    proxy = await spawn(config)
    broken = config_doc({"a": upstream})
    broken["providers"]["a"]["timeouts"] = {"idle": "x"}
    write_config(config, broken)

    rejected = await proxy.wait_log(lambda line: line.get("msg", "").startswith("reload rejected"))

    assert rejected["trigger"] == "file change"
    assert any("providers.a.timeouts.idle" in error for error in rejected["errors"])
    served = await ask(client, proxy)
    assert served.status == 200 and served.headers["x-proxy-provider"] == "a"
    assert await readyz(client, proxy) == 200
    assert await metric(client, proxy, 'llmproxy_config_reloads_total{result="error"}') == 1
    assert await metric(client, proxy, 'llmproxy_config_reloads_total{result="ok"}') == 0


async def test_reload_keeps_cooldowns_and_disabled_keys_of_keys_that_stay(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, client: aiohttp.ClientSession
) -> None:
    keys = ["${KEY_A1}", "${KEY_A2}", "${KEY_A3}"]
    doc = config_doc({"a": upstream})
    doc["providers"]["a"]["keys"] = keys
    config = write_config(tmp_path / "providers.yaml", doc)
    proxy = await spawn(config)
    upstream.script_key(KEYS["KEY_A1"], Reply(429, headers={"Retry-After": "120"}))
    upstream.script_key(KEYS["KEY_A2"], Reply(401))
    assert (await ask(client, proxy)).status == 200
    assert [seen.key for seen in upstream.seen] == [KEYS[k] for k in ("KEY_A1", "KEY_A2", "KEY_A3")]

    # Same keys, other settings, one key more: the cooling and disabled keys stay so.
    doc["providers"]["a"]["keys"] = [*keys, "sk-life-a4-secret"]
    doc["providers"]["a"]["timeouts"] = {"idle": 3}
    write_config(config, doc)
    proxy.send(signal.SIGHUP)
    await proxy.wait_log(lambda line: line.get("trigger") == "SIGHUP")

    assert (await ask(client, proxy)).status == 200
    assert upstream.seen[-1].key == KEYS["KEY_A3"]
    assert len(upstream.seen) == 4
    state = 'llmproxy_keys{provider="a",state="%s"}'
    assert await metric(client, proxy, state % "cooling") == 1
    assert await metric(client, proxy, state % "disabled") == 1
    assert await metric(client, proxy, state % "ready") == 2


# --- what the watcher compares ---------------------------------------------------------------


def test_file_identity_changes_with_every_way_a_config_is_replaced(tmp_path: Path) -> None:
    config = tmp_path / "providers.yaml"
    config.write_text("a: 1\n")
    first = file_identity(str(config))
    assert first is not None and file_identity(str(config)) == first

    config.write_text("a: 22\n")  # written in place
    second = file_identity(str(config))
    assert second != first

    write_config(config, {"a": 1})  # renamed over
    third = file_identity(str(config))
    assert third not in (first, second)

    volume = tmp_path / "volume"
    link = configmap_volume(volume, "2026_x", {"a": 1})
    before = file_identity(str(link))
    configmap_volume(volume, "2026_y", {"a": 1})  # same content, new `..data` target
    after = file_identity(str(link))
    assert before is not None and after is not None and after != before
    assert after[3].endswith("..2026_y/providers.yaml")


def test_file_identity_changes_when_a_same_size_write_keeps_the_timestamp(tmp_path: Path) -> None:
    # Two writes within one tick of the file system's clock: mtime and size stay the same.
    config = tmp_path / "providers.yaml"
    config.write_text("a: 1\n")
    stat = config.stat()
    before = file_identity(str(config))
    config.write_text("a: 2\n")
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = file_identity(str(config))
    assert before is not None and after is not None
    assert after[:4] == before[:4]  # inode, mtime, size and path alone would miss it
    assert after != before


def test_file_identity_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert file_identity(str(tmp_path / "absent.yaml")) is None
