"""A provider's keys: declared and from the environment, deduplicated, and the reason a
provider is disabled when none is left; key values never appear in an error."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.configdoc import SECRET, document, error, errors, only, parse, provider

# --- providers: keys ------------------------------------------------------------------------


def test_keys_strings_and_maps_named_by_declared_position() -> None:
    keys = ["${FIRST}", "${SECOND}", {"value": "${THIRD}", "name": "team-a"}, {"value": "lit"}]
    p = only(parse(document({"p": provider(keys=keys)}), SECOND="k2", THIRD="k3"))
    assert [(k.name, k.secret.reveal()) for k in p.keys] == [
        ("#2", "k2"),
        ("team-a", "k3"),
        ("#4", "lit"),
    ]
    assert p.enabled and not p.keyless


def test_keys_then_keys_from_env() -> None:
    doc = document({"p": provider(keys=["${MAIN}"], keys_from_env="GROQ_API_KEY")})
    env = {
        "MAIN": "main",
        "GROQ_API_KEY_10": "k10",
        "GROQ_API_KEY_3": "k3",
        "GROQ_API_KEY": "k",
        "GROQ_API_KEY_1": "k1",
    }
    names = [k.name for k in only(parse(doc, **env)).keys]
    assert names == ["#1", "GROQ_API_KEY", "GROQ_API_KEY_1", "GROQ_API_KEY_3", "GROQ_API_KEY_10"]


def test_the_same_key_value_twice_is_one_key() -> None:
    doc = document({"p": provider(keys_from_env="K")})
    assert [k.name for k in only(parse(doc, K="same", K_1="same", K_2="other")).keys] == [
        "K",
        "K_2",
    ]


def test_key_values_are_stripped() -> None:
    p = only(parse(document({"p": provider(keys=["${K}"])}), K=" value\n"))
    assert p.keys[0].secret.reveal() == "value"


@pytest.mark.parametrize(
    ("fields", "env", "reason"),
    [
        ({"keys_from_env": "GROQ_API_KEY"}, {}, "no key: GROQ_API_KEY, GROQ_API_KEY_<n> unset"),
        (
            {"keys_from_env": "GROQ_API_KEY"},
            {"GROQ_API_KEY": ""},
            "no key: GROQ_API_KEY, GROQ_API_KEY_<n> unset",
        ),
        ({"keys": ["", "${A:-}"]}, {}, "no key: every entry of keys is empty (A unset)"),
        (
            {"keys": ["${A}", "${B}"]},
            {"B": ""},
            "no key: every entry of keys is empty (A unset, B empty)",
        ),
        ({"keys": []}, {}, "no key: every entry of keys is empty"),
        (
            {"keys": ["${A}"], "keys_from_env": "K"},
            {},
            "no key: every entry of keys is empty (A unset) and K, K_<n> unset",
        ),
    ],
)
def test_no_key_left_disables(fields: dict[str, Any], env: dict[str, str], reason: str) -> None:
    p = only(parse(document({"p": provider(**fields)}), **env))
    assert p.disabled_reason == reason
    assert not p.enabled


def test_keys_optional_makes_it_keyless_instead() -> None:
    p = only(parse(document({"p": provider(keys=["${G4F_API_KEY:-}"], keys_optional=True)})))
    assert p.enabled and p.keyless
    with_key = parse(
        document({"p": provider(keys=["${G4F_API_KEY:-}"], keys_optional=True)}), G4F_API_KEY="g"
    )
    assert [k.name for k in only(with_key).keys] == ["#1"]


def test_naming_no_keys_is_keyless() -> None:
    p = only(parse(document()))
    assert p.enabled and p.keyless


def test_enabled_false_wins_over_other_reasons() -> None:
    p = only(parse(document({"p": provider(enabled=False, base_url="", keys=[])})))
    assert p.disabled_reason == "enabled: false"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["${A}", {"value": "${B}", "name": "#1"}], "keys[1].name: duplicate key name '#1'"),
        (
            [{"value": "x", "name": "a"}, {"value": "", "name": "a"}],
            "keys[1].name: duplicate key name 'a'",
        ),
        ([{"name": "a"}], "keys[0].value: required"),
        ([{"value": "x", "name": ""}], "keys[0].name: must not be empty"),
        ([{"value": "x", "label": "a"}], "keys[0]: unknown field (expected value, name)"),
        ([{"value": "x", 123456789: "a"}], "keys[0]: unknown field (expected value, name)"),
        ("${A}", 'keys: expected a list of keys, got a string; e.g. keys: ["${MY_KEY}"]'),
        ([123], "keys[0]: expected a string, got a number"),
    ],
)
def test_key_rules(keys: object, message: str) -> None:
    assert error(document({"p": provider(keys=keys)}), A="a", B="b") == f"providers.p.{message}"


def test_key_name_clash_between_keys_and_keys_from_env() -> None:
    doc = document({"p": provider(keys=[{"value": "a", "name": "K_1"}], keys_from_env="K")})
    assert error(doc, K_1="b") == "providers.p.keys_from_env: duplicate key name 'K_1'"


@pytest.mark.parametrize("value", ["${GROQ_API_KEY}", SECRET, ""])
def test_keys_from_env_must_be_a_variable_name(value: str) -> None:
    # A key written here by mistake must not end up in the message.
    message = error(document({"p": provider(keys_from_env=value)}), GROQ_API_KEY=SECRET)
    assert message == (
        "providers.p.keys_from_env: expected the name of an environment variable,"
        " such as GROQ_API_KEY"
    )


def test_key_with_inner_whitespace_is_rejected_without_showing_it() -> None:
    doc = document({"p": provider(keys=[f"{SECRET} extra"], keys_from_env="K")})
    assert errors(doc, K_1="bad\x00key") == [
        "providers.p.keys[0]: must not contain whitespace or control characters",
        "providers.p.keys_from_env (K_1): must not contain whitespace or control characters",
    ]
