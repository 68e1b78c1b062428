"""The config file as text: reading it, the `.env` beside it, and YAML with duplicate keys.

Everything here that can go wrong raises `FileProblem` with one message ready to report;
`proxy.config.load_settings` turns it into a `ConfigError`. Messages never quote the file's
content: a line of it may hold a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import yaml

from proxy.configread import join


class FileProblem(Exception):
    """The file cannot be read or parsed; `str()` is the message, naming the file."""


def read_text(file: Path) -> str:
    """The config file's text, which must be UTF-8."""
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileProblem(f"{file}: no such file") from None
    except UnicodeDecodeError:
        raise FileProblem(f"{file}: not UTF-8 text") from None
    except OSError as err:
        raise FileProblem(f"{file}: cannot read: {err.strerror or err}") from None


def read_dotenv(file: Path) -> dict[str, str]:
    """The variables a `.env` file sets, taken literally; none when there is no such file."""
    if not file.is_file():
        return {}
    # Imported here: most deployments have no `.env`, and start-up time counts (~10 ms).
    from dotenv import dotenv_values

    try:
        # interpolate=False: `${...}` inside .env would be resolved against os.environ,
        # bypassing the environment this loader was given. Values are taken literally.
        values = dotenv_values(file, interpolate=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise FileProblem(f"{file}: cannot read this .env file") from None
    return {name: value for name, value in values.items() if value is not None}


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 timestamps: `anthropic-version: 2023-06-01` stays a string."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def parse_yaml(text: str, source: str) -> tuple[object, list[str]]:
    """The document, and one message per duplicate map key (PyYAML keeps the last silently).

    `source` names the file in the message of a syntax error.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        duplicates = list(_duplicate_keys(node, "", set()))
        return loader.construct_document(node), duplicates
    except yaml.MarkedYAMLError as err:
        # Only the problem and its position: str(err) quotes the offending line, which may
        # hold a key.
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({err.context})" if err.context else ""
        raise FileProblem(f"{source}: {where}{err.problem}{context}") from None
    except yaml.YAMLError:
        raise FileProblem(f"{source}: not a valid YAML document") from None
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> Iterator[str]:
    if id(node) in seen:  # an alias: already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, join(path, index), seen)
    elif isinstance(node, yaml.MappingNode):
        names: set[tuple[str, str]] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = str(key_node.value)
            if (key_node.tag, key) in names:
                line = key_node.start_mark.line + 1
                if path == "providers":
                    yield f"providers: duplicate name {key!r} (line {line})"
                elif _is_secret_path(path):
                    yield f"{path}: duplicate key (line {line})"
                else:
                    yield f"{path or '(document)'}: duplicate key {key!r} (line {line})"
            names.add((key_node.tag, key))
            yield from _duplicate_keys(value_node, join(path, key), seen)


def _is_secret_path(path: str) -> bool:
    return re.search(r"(^|\.)(api_)?keys(\[|$)", path) is not None
