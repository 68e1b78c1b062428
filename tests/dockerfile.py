"""A small reader of the repository's Dockerfile, for the tests that check the image.

No Docker engine runs where the tests run, so the image is checked from its source: the
stages, the final stage's environment, and the command it starts (which the life-cycle tests
then run for real).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    args: str


def instructions(text: str) -> list[Instruction]:
    """Every instruction, continuation lines joined, comments and blank lines dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


def stages(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage, each list starting with its FROM."""
    groups: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(instruction)
    return groups


def exec_form(args: str) -> list[str]:
    """`["python", "-m", "proxy"]` -> the list; a shell-form command is an error here."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env(stage: list[Instruction]) -> dict[str, str]:
    """The stage's ENV values (`KEY=value` pairs; `$PATH`-style references left as written)."""
    values: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def last(stage: list[Instruction], keyword: str) -> Instruction | None:
    found = [i for i in stage if i.keyword == keyword]
    return found[-1] if found else None


def final_stage(path: Path = DOCKERFILE) -> list[Instruction]:
    return stages(path.read_text())[-1]


def image_command(path: Path = DOCKERFILE) -> list[str]:
    """What `docker run IMAGE` executes: the final stage's ENTRYPOINT followed by its CMD."""
    stage = final_stage(path)
    entrypoint, cmd = last(stage, "ENTRYPOINT"), last(stage, "CMD")
    return (exec_form(entrypoint.args) if entrypoint else []) + (exec_form(cmd.args) if cmd else [])


def healthcheck_command(path: Path = DOCKERFILE) -> list[str]:
    """The HEALTHCHECK's exec-form command (its options stripped)."""
    check = last(final_stage(path), "HEALTHCHECK")
    assert check is not None, "the image has no HEALTHCHECK"
    _, _, command = check.args.partition("CMD ")
    return exec_form(command)
