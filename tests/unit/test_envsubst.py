"""`${VAR}` expansion, `keys_from_env` ordering and `PROVIDER_PRIORITY_<NAME>` naming."""

from __future__ import annotations

import pytest

from proxy.envsubst import (
    ExpansionError,
    env_name,
    expand,
    keys_from_env,
    references,
    sole_reference,
)

ENV = {"A": "alpha", "EMPTY": "", "B": "beta"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "alpha"),
        ("x-${A}-y", "x-alpha-y"),
        ("${A}${B}", "alphabeta"),
        ("${UNSET}", ""),
        ("${EMPTY}", ""),
        ("${UNSET:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),  # `:-` also covers set-but-empty, as in sh
        ("${A:-fallback}", "alpha"),
        ("${UNSET:-}", ""),
        ("${UNSET:-http://127.0.0.1:1337/v1}", "http://127.0.0.1:1337/v1"),
        ("${UNSET:-${B}}", "beta"),
        ("${UNSET:-pre-${OTHER:-deep}-post}", "pre-deep-post"),
        ("$${A}", "${A}"),
        ("$${A} and ${A}", "${A} and alpha"),
        ("$A", "$A"),
        ("cost: $5", "cost: $5"),
        ("$", "$"),
        ("$$", "$$"),
        ("a}b", "a}b"),
        ("", ""),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, ENV) == expected


def test_expand_does_not_expand_values_again() -> None:
    assert expand("${A}", {"A": "${B}", "B": "no"}) == "${B}"


@pytest.mark.parametrize(
    "text",
    ["${", "${A", "${1A}", "${}", "${A-x}", "${A:?x}", "${A:-x", "${A:-${B}", "${sk-123}"],
)
def test_malformed_reference_raises_without_quoting_the_text(text: str) -> None:
    with pytest.raises(ExpansionError) as caught:
        expand("sk-SECRET " + text + " sk-SECRET", ENV)
    assert "SECRET" not in str(caught.value)
    assert "sk-123" not in str(caught.value)


def test_references_lists_top_level_names() -> None:
    assert references("${A}/x/${B:-${C}}") == ("A", "B")
    assert references("plain $A and $${B}") == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${G4F_GROQ_API_BASE:-}", "G4F_GROQ_API_BASE"),
        ("${X}", "X"),
        ("${X:-${Y}}", "X"),
        ("https://${X}", None),
        ("${X}${Y}", None),
        ("plain", None),
    ],
)
def test_sole_reference(text: str, expected: str | None) -> None:
    assert sole_reference(text) == expected


def test_keys_from_env_orders_numerically_with_gaps() -> None:
    environ = {
        "KEY_10": "k10",
        "KEY_3": "k3",
        "KEY": "k",
        "KEY_1": "k1",
        "KEY_2": "",  # empty: dropped
        "KEY_X": "not numbered",
        "KEYS_1": "another family",
        "OTHER_KEY_1": "not ours",
    }
    assert keys_from_env("KEY", environ) == [
        ("KEY", "k"),
        ("KEY_1", "k1"),
        ("KEY_3", "k3"),
        ("KEY_10", "k10"),
    ]


def test_keys_from_env_without_the_bare_name() -> None:
    assert keys_from_env("KEY", {"KEY_2": "b", "KEY_1": "a"}) == [("KEY_1", "a"), ("KEY_2", "b")]


def test_keys_from_env_order_does_not_depend_on_environment_order() -> None:
    one = keys_from_env("K", {"K_01": "x", "K_1": "y"})
    two = keys_from_env("K", {"K_1": "y", "K_01": "x"})
    assert one == two == [("K_01", "x"), ("K_1", "y")]


def test_keys_from_env_name_is_taken_literally() -> None:
    assert keys_from_env("A.B", {"AXB_1": "no", "A.B_1": "yes"}) == [("A.B_1", "yes")]


def test_keys_from_env_nothing_set() -> None:
    assert keys_from_env("KEY", {"KEY": ""}) == []


@pytest.mark.parametrize(
    ("provider", "expected"),
    [("groq", "GROQ"), ("g4f", "G4F"), ("my-groq.eu", "MY_GROQ_EU"), ("Azure West", "AZURE_WEST")],
)
def test_env_name(provider: str, expected: str) -> None:
    assert env_name(provider) == expected
