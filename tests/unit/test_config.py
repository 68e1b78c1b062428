"""Config loading and validation: every rule of SPEC §2 and the path each error names."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, load_settings, parse_settings
from proxy.settings import (
    AuthHeader,
    BreakerSettings,
    Continuation,
    Cooldown,
    Provider,
    Rotation,
    Settings,
    Timeouts,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-live-0123456789abcdef"


def provider(**fields: Any) -> dict[str, Any]:
    return {"base_url": "https://api.example.com/v1", "models": ["m"], **fields}


def document(
    providers: Mapping[str, Any] | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"providers": dict(providers or {"p": provider()})}
    if server is not None:
        doc["server"] = dict(server)
    if defaults is not None:
        doc["defaults"] = dict(defaults)
    return doc


def parse(doc: object, **env: str) -> Settings:
    return parse_settings(doc, env)


def only(settings: Settings) -> Provider:
    assert len(settings.providers) == 1
    return settings.providers[0]


def errors(doc: object, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(doc, env)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


def error(doc: object, **env: str) -> str:
    found = errors(doc, **env)
    assert len(found) == 1, found
    return found[0]


def write(directory: Path, text: str, name: str = "providers.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- files ----------------------------------------------------------------------------------


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.errors == [f"{path}: no such file"]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  p:\n    base_url: [unclosed\n    models: [m]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    (message,) = caught.value.errors
    assert message.startswith(f"{path}: line ")


def test_yaml_syntax_error_does_not_quote_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, f'providers:\n  p:\n    keys: ["{SECRET}"\n  bad: : :\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert SECRET not in str(caught.value)


def test_duplicate_provider_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          groq: {base_url: "https://a.example/v1", models: [m]}
          groq: {base_url: "https://b.example/v1", models: [m]}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.errors == ["providers: duplicate name 'groq' (line 4)"]


def test_duplicate_key_anywhere_names_its_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {port: 1, port: 2}
        providers:
          p:
            base_url: https://a.example/v1
            models: {a: x, a: y}
            timeouts: {idle: 1}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.errors == [
        "server: duplicate key 'port' (line 2)",
        "providers.p.models: duplicate key 'a' (line 6)",
    ]


def test_duplicate_errors_come_with_the_other_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          p: {base_url: "https://a.example/v1", models: [m], tier: x}
          p: {base_url: "https://a.example/v1", models: [m], tier: 0}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.errors == [
        "providers: duplicate name 'p' (line 4)",
        "providers.p.tier: must be >= 1, got 0",
    ]


def test_a_duplicate_inside_a_key_entry_is_not_quoted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        providers:
          p:
            base_url: https://a.example/v1
            models: [m]
            keys: [{{{SECRET}: 1, {SECRET}: 2}}]
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert "providers.p.keys[0]: duplicate key (line 6)" in caught.value.errors
    assert SECRET not in str(caught.value)


def test_dates_stay_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          anthropic:
            base_url: https://api.anthropic.com/v1
            models: [claude]
            headers: {anthropic-version: 2023-06-01}
        """,
    )
    assert only(load_settings(path, {})).headers == (("anthropic-version", "2023-06-01"),)


def test_a_date_from_another_loader_gets_a_hint() -> None:
    doc = yaml.safe_load(
        "providers: {p: {base_url: 'https://a.example', models: [m], headers: {v: 2023-06-01}}}"
    )
    assert error(doc) == "providers.p.headers.v: expected a string, got a date"


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, ""), {})
    assert caught.value.errors == ["providers: required: a map of name -> provider"]


def test_dotenv_beside_the_config_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "A_KEY=from-dotenv\nB_KEY=also-dotenv\nPORT=9001\nLITERAL=${A_KEY}\n", encoding="utf-8"
    )
    path = write(
        tmp_path,
        """
        server: {port: "${PORT}"}
        providers:
          a: {base_url: "https://a.example/v1", models: [m], keys: ["${A_KEY}"]}
          b: {base_url: "https://b.example/v1", models: [m], keys: ["${B_KEY}"]}
          c: {base_url: "https://c.example/v1", models: [m], keys: ["${LITERAL}"]}
        """,
    )
    settings = load_settings(path, {"A_KEY": "from-env"})
    keys = {p.name: p.keys[0].secret.reveal() for p in settings.providers}
    assert keys == {"a": "from-env", "b": "also-dotenv", "c": "${A_KEY}"}
    assert settings.server.port == 9001
    assert settings.source == str(path)


def test_environ_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONFIG_TEST_KEY", "from-os-environ")
    path = write(
        tmp_path,
        'providers: {p: {base_url: "https://a.example", models: [m],'
        ' keys: ["${CONFIG_TEST_KEY}"]}}',
    )
    assert only(load_settings(path)).keys[0].secret.reveal() == "from-os-environ"


def test_default_providers_yaml_loads_with_nothing_set() -> None:
    settings = load_settings(REPO / "providers.yaml", {})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.server.api_keys == ()
    enabled = [p for p in settings.providers if p.enabled]
    assert [p.name for p in enabled] == ["g4f"]
    g4f = enabled[0]
    assert g4f.tier == 5
    assert g4f.keyless
    endpoint = g4f.endpoint_for("some-model")
    assert endpoint is not None
    assert endpoint.base_url == "http://127.0.0.1:1337/v1"
    assert g4f.endpoint_for("llama-3.3-70b") == endpoint  # its own base is unset
    disabled = {p.name: p.disabled_reason for p in settings.providers if not p.enabled}
    assert disabled["openai"] == "no key: OPENAI_API_KEY, OPENAI_API_KEY_<n> unset"
    assert set(disabled) == {"openai", "anthropic", "groq", "openrouter", "gemini", "mistral"}


def test_default_providers_yaml_with_keys_and_bases() -> None:
    env = {
        "OPENAI_API_KEY": "sk-a",
        "OPENAI_API_KEY_2": "sk-b",
        "ANTHROPIC_API_KEY": "sk-ant",
        "GROQ_API_KEY": "gsk",
        "G4F_API_KEY": "g4f-key",
        "G4F_GROQ_API_BASE": "http://g4f-groq:1337/v1/",
        "PROXY_API_KEY": "proxy-key",
        "PROVIDER_PRIORITY_GROQ": "1",
    }
    settings = load_settings(REPO / "providers.yaml", env)
    openai = settings.provider("openai")
    anthropic = settings.provider("anthropic")
    groq = settings.provider("groq")
    g4f = settings.provider("g4f")
    assert openai is not None and anthropic is not None and groq is not None and g4f is not None
    assert [k.name for k in openai.keys] == ["OPENAI_API_KEY", "OPENAI_API_KEY_2"]
    assert anthropic.auth_header == AuthHeader(name="x-api-key", prefix="")
    assert anthropic.headers == (("anthropic-version", "2023-06-01"),)
    assert groq.tier == 1
    assert groq.upstream_model("llama-3.3-70b") == "llama-3.3-70b-versatile"
    assert [k.name for k in g4f.keys] == ["#1"]
    endpoint = g4f.endpoint_for("llama-3.3-70b")
    assert endpoint is not None and endpoint.base_url == "http://g4f-groq:1337/v1"
    assert len(settings.server.api_keys) == 1


EXAMPLE_ENV = {
    "PROXY_API_KEY": "proxy-key",
    "AZURE_OPENAI_RESOURCE": "contoso",
    "AZURE_OPENAI_API_KEY": "azure-key",
    "OPENAI_API_KEY": "sk-openai",
}


@pytest.mark.parametrize(
    "path", sorted((REPO / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_loads(path: Path) -> None:
    settings = load_settings(path, EXAMPLE_ENV)
    assert any(p.enabled for p in settings.providers)


def test_the_examples_exist() -> None:
    names = {p.name for p in (REPO / "config" / "examples").glob("*.yaml")}
    assert {"minimal.yaml", "azure.yaml", "local.yaml"} <= names


def test_minimal_example_has_a_catch_all_tier() -> None:
    settings = load_settings(REPO / "config" / "examples" / "minimal.yaml", {})
    fallback = settings.provider("fallback")
    assert fallback is not None and fallback.enabled and fallback.keyless
    assert fallback.upstream_model("anything-at-all") == "gpt-4o-mini"


# --- top level ------------------------------------------------------------------------------


def test_unknown_top_level_field_suggests() -> None:
    doc = document()
    doc["servr"] = {}
    assert error(doc) == "servr: unknown field; did you mean 'server'?"


def test_document_must_be_a_map() -> None:
    assert error([1, 2]) == "(document): expected a map, got a list"


@pytest.mark.parametrize(
    ("providers", "message"),
    [
        (None, "providers: expected a map of name -> provider, got null"),
        ([], "providers: expected a map of name -> provider, got a list"),
        ({}, "providers: at least one provider is required"),
    ],
)
def test_providers_must_be_a_non_empty_map(providers: object, message: str) -> None:
    assert error({"providers": providers}) == message


def test_provider_name_rules() -> None:
    doc = {"providers": {"a/b": provider(), "": provider(), 7: provider(), "ok": provider()}}
    assert errors(doc) == [
        "providers[\"a/b\"]: a provider name must not contain '/'"
        " (pinned models are provider/model)",
        'providers: provider names must be non-empty strings, got ""',
        "providers: provider names must be non-empty strings, got 7",
    ]


def test_every_problem_is_reported_at_once() -> None:
    doc = document(
        {"a": provider(tier="x"), "b": provider(weight=0, rotation="random")},
        server={"port": -1},
    )
    assert errors(doc) == [
        "server.port: must be between 0 and 65535, got -1",
        'providers.a.tier: expected an integer, got "x"',
        "providers.b.weight: must be > 0, got 0",
        'providers.b.rotation: expected one of balanced, sequential, got "random"',
    ]


def test_disabled_providers_stay_in_declaration_order() -> None:
    doc = document({"z": provider(enabled=False), "a": provider(), "m": provider(keys=[])})
    settings = parse(doc)
    assert [(p.name, p.enabled) for p in settings.providers] == [
        ("z", False),
        ("a", True),
        ("m", False),
    ]


# --- typed values and expansion -------------------------------------------------------------


def test_example_error_from_the_spec() -> None:
    doc = document({"groq": provider(timeouts={"idle": "x"})})
    assert error(doc) == 'providers.groq.timeouts.idle: expected a number, got "x"'


def test_number_from_expansion_is_coerced() -> None:
    doc = document(server={"port": "${PORT:-8000}", "shutdown_grace_seconds": "${GRACE}"})
    assert parse(doc, GRACE="2.5").server.port == 8000
    assert parse(doc, PORT="9000", GRACE="1e1").server.port == 9000
    assert parse(doc, GRACE="1e1").server.shutdown_grace_seconds == 10.0


def test_number_from_expansion_that_is_not_a_number() -> None:
    doc = document(server={"port": "${PORT}"})
    assert (
        error(doc, PORT="eighty")
        == 'server.port: expected an integer, got "eighty" (from "${PORT}")'
    )
    assert error(doc) == 'server.port: expected an integer, got "" (from "${PORT}")'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "expected an integer, got true"),
        (None, "expected an integer, got null"),
        (2.5, "expected an integer, got 2.5"),
        ("2.5", 'expected an integer, got "2.5"'),
        ([3], "expected an integer, got a list"),
        ("nan", 'expected an integer, got "nan"'),
    ],
)
def test_integer_field_rejects(value: object, message: str) -> None:
    assert error(document(defaults={"max_attempts": value})) == f"defaults.max_attempts: {message}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (False, "expected a number, got false"),
        (float("inf"), "expected a finite number, got inf"),
        ("1_000", 'expected a number, got "1_000"'),
        ("inf", 'expected a number, got "inf"'),
    ],
)
def test_number_field_rejects(value: object, message: str) -> None:
    assert error(document(defaults={"max_wait": value})) == f"defaults.max_wait: {message}"


def test_quoted_number_is_accepted() -> None:
    assert parse(document(defaults={"max_wait": "2.5"})).providers[0].max_wait == 2.5


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("False", False), ("1", True), ("no", False)]
)
def test_boolean_from_expansion(text: str, expected: bool) -> None:
    doc = document({"p": provider(enabled="${ON}")})
    assert only(parse(doc, ON=text)).enabled is expected


@pytest.mark.parametrize(("value", "shown"), [(1, "1"), ("maybe", '"maybe"'), (None, "null")])
def test_boolean_field_rejects(value: object, shown: str) -> None:
    doc = document({"p": provider(keys_optional=value)})
    assert error(doc) == f"providers.p.keys_optional: expected true or false, got {shown}"


def test_malformed_reference_names_the_path() -> None:
    doc = document({"p": provider(keys=[f"{SECRET}${{OOPS"])})
    message = error(doc)
    assert message == "providers.p.keys[0]: unterminated ${...} reference: missing '}'"


def test_map_keys_are_not_expanded() -> None:
    doc = document({"p": provider(models={"${X}": "${X}"})})
    assert only(parse(doc, X="up")).upstream_model("${X}") == "up"


# --- server ---------------------------------------------------------------------------------


def test_server_defaults() -> None:
    server = parse(document()).server
    assert (server.host, server.port, server.api_keys) == ("127.0.0.1", 8000, ())
    assert server.max_body_bytes == 32 * 1024 * 1024
    assert (server.shutdown_grace_seconds, server.sse_keepalive_seconds) == (30.0, 15.0)
    assert server.allow_unauthenticated is False


def test_server_fields() -> None:
    doc = document(
        server={
            "host": "0.0.0.0",
            "port": 8080,
            "api_keys": ["${PROXY_API_KEY}", "${SECOND:-}", "", "${PROXY_API_KEY}"],
            "max_body_bytes": 1024,
            "shutdown_grace_seconds": 0,
            "sse_keepalive_seconds": 0.5,
        }
    )
    server = parse(doc, PROXY_API_KEY="proxy-key").server
    assert (server.host, server.port) == ("0.0.0.0", 8080)
    assert [secret.reveal() for secret in server.api_keys] == ["proxy-key"]
    assert (server.max_body_bytes, server.shutdown_grace_seconds) == (1024, 0.0)
    assert server.sse_keepalive_seconds == 0.5


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_body_bytes", 0, "must be >= 1, got 0"),
        ("shutdown_grace_seconds", -1, "must be >= 0, got -1"),
        ("sse_keepalive_seconds", 0, "must be > 0, got 0"),
        ("port", 65536, "must be between 0 and 65535, got 65536"),
        ("host", "", "must not be empty"),
        ("api_keys", "${PROXY_API_KEY}", "expected a list of strings, got a string"),
        ("allow_unauthenticated", "sure", 'expected true or false, got "sure"'),
        ("api_key", [], "unknown field; did you mean 'api_keys'?"),
    ],
)
def test_server_field_rules(field: str, value: object, message: str) -> None:
    assert error(document(server={field: value})) == f"server.{field}: {message}"


def test_port_zero_lets_the_system_pick() -> None:
    assert parse(document(server={"port": 0})).server.port == 0


def test_proxy_host_and_port_override() -> None:
    doc = document(server={"host": "127.0.0.1", "port": 1, "api_keys": ["k"]})
    server = parse(doc, PROXY_HOST="0.0.0.0", PROXY_PORT="9999").server
    assert (server.host, server.port) == ("0.0.0.0", 9999)
    assert parse(doc, PROXY_HOST="", PROXY_PORT="").server.port == 1


@pytest.mark.parametrize("port", ["http", "0", "70000", "80.5"])
def test_proxy_port_must_be_a_port(port: str) -> None:
    assert error(document(), PROXY_PORT=port) == (
        f'PROXY_PORT: expected an integer between 1 and 65535, got "{port}"'
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "proxy.internal"])
def test_no_proxy_keys_on_a_public_host_is_refused(host: str) -> None:
    doc = document(server={"host": host, "api_keys": ["${PROXY_API_KEY:-}"]})
    assert error(doc) == (
        f"server.api_keys: empty; refusing to listen on {host} without proxy keys; "
        "set server.api_keys (PROXY_API_KEY) or allow_unauthenticated: true"
    )
    assert parse(doc, PROXY_API_KEY="k").server.host == host
    unauthenticated = document(server={"host": host, "allow_unauthenticated": True})
    assert parse(unauthenticated).server.api_keys == ()


def test_the_check_applies_to_proxy_host() -> None:
    assert error(document(), PROXY_HOST="0.0.0.0").startswith("server.api_keys: empty; refusing")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LocalHost"]
)
def test_loopback_hosts_need_no_proxy_keys(host: str) -> None:
    assert parse(document(server={"host": host})).server.api_keys == ()


# --- defaults -------------------------------------------------------------------------------


def test_builtin_defaults() -> None:
    p = only(parse(document()))
    assert p.timeouts == Timeouts(connect=5, first_byte=60, idle=60, total=600)
    assert p.cooldown == Cooldown(initial=1, max=300, auth=3600)
    assert p.breaker == BreakerSettings(failures=5, open_seconds=30)
    assert (p.max_attempts, p.max_wait, p.max_concurrent_per_key) == (10, 5.0, 0)
    assert p.rotation is Rotation.BALANCED
    assert p.tier == 1
    assert p.weight == 1.0
    assert p.continuation is Continuation.NONE
    assert p.paths is None
    assert p.auth_header == AuthHeader(name="Authorization", prefix="Bearer ")


def test_defaults_merge_field_by_field_and_the_provider_wins() -> None:
    defaults = {
        "timeouts": {"idle": 30},
        "cooldown": {"max": 120},
        "breaker": {"failures": 2},
        "max_attempts": 4,
        "max_wait": 0,
        "rotation": "sequential",
        "max_concurrent_per_key": 8,
    }
    own = provider(timeouts={"connect": 2}, breaker={"open_seconds": 5}, max_attempts=2)
    settings = parse(document({"own": own, "plain": provider()}, defaults=defaults))
    mine, plain = settings.providers
    assert plain.timeouts == Timeouts(connect=5, first_byte=60, idle=30, total=600)
    assert mine.timeouts == Timeouts(connect=2, first_byte=60, idle=30, total=600)
    assert mine.cooldown == plain.cooldown == Cooldown(initial=1, max=120, auth=3600)
    assert mine.breaker == BreakerSettings(failures=2, open_seconds=5)
    assert (mine.max_attempts, plain.max_attempts) == (2, 4)
    assert mine.max_wait == 0.0
    assert mine.rotation is Rotation.SEQUENTIAL
    assert plain.max_concurrent_per_key == 8


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timeouts", {"connect": 0}, "timeouts.connect: must be > 0, got 0"),
        ("timeouts", {"total": -1}, "timeouts.total: must be > 0, got -1"),
        ("timeouts", {"idel": 1}, "timeouts.idel: unknown field; did you mean 'idle'?"),
        ("timeouts", 30, "timeouts: expected a map, got 30"),
        ("cooldown", {"auth": 0}, "cooldown.auth: must be > 0, got 0"),
        ("breaker", {"failures": 0}, "breaker.failures: must be >= 1, got 0"),
        ("breaker", {"failures": 1.5}, "breaker.failures: expected an integer, got 1.5"),
        ("breaker", {"open_seconds": 0}, "breaker.open_seconds: must be > 0, got 0"),
        ("max_attempts", 0, "max_attempts: must be >= 1, got 0"),
        ("max_wait", -0.5, "max_wait: must be >= 0, got -0.5"),
        ("rotation", "random", 'rotation: expected one of balanced, sequential, got "random"'),
        ("rotation", 1, "rotation: expected one of balanced, sequential, got 1"),
        ("max_concurrent_per_key", -1, "max_concurrent_per_key: must be >= 0, got -1"),
    ],
)
def test_common_field_rules_in_defaults_and_providers(
    field: str, value: object, message: str
) -> None:
    assert error(document(defaults={field: value})) == f"defaults.{message}"
    assert error(document({"groq": provider(**{field: value})})) == f"providers.groq.{message}"


def test_unknown_defaults_field() -> None:
    assert error(document(defaults={"tier": 1})) == (
        "defaults.tier: unknown field; known: timeouts, cooldown, breaker, max_attempts,"
        " max_wait, max_concurrent_per_key, rotation"
    )


def test_empty_sections_are_allowed() -> None:
    assert parse({"server": None, "defaults": None, "providers": {"p": provider()}}).providers


# --- providers: tier, URLs, endpoints -------------------------------------------------------


def test_unknown_provider_field_suggests() -> None:
    doc = document({"groq": provider(timeout={"idle": 1})})
    assert error(doc) == "providers.groq.timeout: unknown field; did you mean 'timeouts'?"


def test_provider_must_be_a_map() -> None:
    assert error(document({"groq": None})) == "providers.groq: expected a map, got null"


def test_tier_and_priority_override() -> None:
    doc = document({"my-groq.eu": provider(tier=3), "other": provider(tier=2)})
    settings = parse(doc, PROVIDER_PRIORITY_MY_GROQ_EU="1", PROVIDER_PRIORITY_OTHER="")
    assert [p.tier for p in settings.providers] == [1, 2]


def test_priority_override_without_a_tier() -> None:
    assert only(parse(document(), PROVIDER_PRIORITY_P="4")).tier == 4


@pytest.mark.parametrize("value", ["first", "0", "1.5"])
def test_priority_override_must_be_an_integer(value: str) -> None:
    assert error(document(), PROVIDER_PRIORITY_P=value) == (
        f'PROVIDER_PRIORITY_P: expected an integer >= 1, got "{value}"'
    )


def test_tier_rules() -> None:
    assert error(document({"p": provider(tier=0)})) == "providers.p.tier: must be >= 1, got 0"


def test_base_url_trailing_slash_is_stripped() -> None:
    doc = document({"p": provider(base_url="${BASE}")})
    assert only(parse(doc, BASE="http://127.0.0.1:1337/v1/")).endpoints[0].base_url == (
        "http://127.0.0.1:1337/v1"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("api.example.com/v1", ""),
        ("ftp://api.example.com", "; the scheme is 'ftp'"),
        ("https://", "; the host is missing"),
        ("https:///v1", "; the host is missing"),
        ("https://.openai.azure.com/v1", "; the host name has an empty label"),
        ("https://api.example.com:99999/v1", "; it has a malformed host or port"),
        (
            "https://api.example.com/v1?key=" + SECRET,
            "; no query or fragment: the request path is appended to it",
        ),
        (
            f"https://user:{SECRET}@api.example.com/v1",
            "; credentials do not belong in it, use keys and auth_header",
        ),
        (f"https://api.example.com/{SECRET} ", "; it contains whitespace or control characters"),
    ],
)
def test_bad_base_url_names_the_path(url: str, problem: str) -> None:
    message = error(document({"p": provider(base_url=url)}))
    assert message == (
        "providers.p.base_url: expected an absolute http(s) URL such as"
        f" https://api.example.com/v1{problem}"
    )
    assert SECRET not in message


def test_empty_base_url_disables_and_names_the_variable() -> None:
    doc = document({"p": provider(base_url="${P_BASE:-}")})
    p = only(parse(doc))
    assert p.disabled_reason == "base_url is empty (P_BASE unset)"
    assert p.endpoints[0].disabled_reason == "base_url is empty (P_BASE unset)"
    assert only(parse(doc, P_BASE="")).disabled_reason == "base_url is empty (P_BASE empty)"
    literal = document({"p": provider(base_url="")})
    assert only(parse(literal)).disabled_reason == "base_url is empty"


def test_base_url_xor_endpoints() -> None:
    both = {
        "models": ["m"],
        "base_url": "https://a.example",
        "endpoints": [{"base_url": "https://b.example"}],
    }
    assert (
        error(document({"p": both})) == "providers.p: give either base_url or endpoints, not both"
    )
    neither = {"models": ["m"]}
    assert error(document({"p": neither})) == "providers.p.base_url: required (or give endpoints)"


def test_endpoints_route_by_upstream_model() -> None:
    g4f = {
        "endpoints": [
            {"base_url": "${GROQ_BASE:-}", "models": ["llama*", "mixtral*"]},
            {"base_url": "https://grok.example/v1", "models": ["grok*"]},
            {"base_url": "${MAIN:-http://127.0.0.1:1337/v1}", "models": ["*"]},
        ]
    }
    p = only(parse(document({"g4f": g4f})))
    assert p.enabled and p.models is None
    assert p.endpoints[0].disabled_reason == "base_url is empty (GROQ_BASE unset)"
    assert p.upstream_model("llama-3") == "llama-3"
    endpoint = p.endpoint_for("grok-2")
    assert endpoint is not None and endpoint.base_url == "https://grok.example/v1"
    endpoint = p.endpoint_for("llama-3")
    assert endpoint is not None and endpoint.base_url == "http://127.0.0.1:1337/v1"


def test_endpoint_without_models_serves_every_model() -> None:
    p = {"models": {"*": "big"}, "endpoints": [{"base_url": "https://a.example"}]}
    endpoint = only(parse(document({"p": p}))).endpoints[0]
    assert endpoint.models is None and endpoint.serves("anything")


def test_a_provider_whose_endpoints_are_all_disabled_is_disabled() -> None:
    p = {
        "endpoints": [
            {"base_url": "${A:-}", "models": ["a*"]},
            {"base_url": "${B}", "models": ["*"]},
        ]
    }
    assert only(parse(document({"p": p}), B="")).disabled_reason == (
        "every endpoint is disabled: endpoints[0]: base_url is empty (A unset);"
        " endpoints[1]: base_url is empty (B empty)"
    )


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ([], "endpoints: expected at least one of endpoints, got an empty list"),
        ({"base_url": "https://a.example"}, "endpoints: expected a list of endpoints, got a map"),
        ([{"models": ["*"]}], "endpoints[0].base_url: required"),
        (
            [{"base_url": "https://a.example", "model": ["*"]}],
            "endpoints[0].model: unknown field; did you mean 'models'?",
        ),
        (
            [{"base_url": "https://a.example", "models": []}],
            "endpoints[0].models: expected at least one of model patterns, got an empty list",
        ),
        (
            [{"base_url": "nope", "models": ["*"]}],
            "endpoints[0].base_url: expected an absolute http(s) URL such as https://api.example.com/v1",
        ),
    ],
)
def test_endpoint_rules(endpoints: object, message: str) -> None:
    doc = document({"p": {"endpoints": endpoints}})
    assert f"providers.p.{message}" in errors(doc)


# --- providers: models ----------------------------------------------------------------------


def test_models_are_required_without_endpoint_patterns() -> None:
    no_models = {"base_url": "https://a.example"}
    assert (
        error(document({"x": no_models}))
        == "providers.x.models: required (or give endpoint models)"
    )
    endpoints = {"endpoints": [{"base_url": "https://a.example"}]}
    assert (
        error(document({"x": endpoints}))
        == "providers.x.models: required (or give endpoint models)"
    )


def test_model_list_of_names_and_globs() -> None:
    p = only(parse(document({"p": provider(models=["gpt-4o", "gpt-4.1*", "o?-mini", "[ab]x"])})))
    assert p.models is not None
    assert p.models.public_names() == ("gpt-4o",)
    assert p.upstream_model("gpt-4o") == "gpt-4o"
    assert p.upstream_model("gpt-4.1-mini") == "gpt-4.1-mini"
    assert p.upstream_model("o3-mini") == "o3-mini"
    assert p.upstream_model("bx") == "bx"
    assert p.upstream_model("GPT-4.1") is None  # globs are case-sensitive
    assert p.upstream_model("gpt-4") is None


def test_model_map_public_to_upstream_with_glob_keys() -> None:
    models = {"llama-3.3-70b": "llama-3.3-70b-versatile", "*": "gpt-4o-mini"}
    p = only(parse(document({"p": provider(models=models)})))
    assert p.upstream_model("llama-3.3-70b") == "llama-3.3-70b-versatile"
    assert p.upstream_model("vendor/anything") == "gpt-4o-mini"
    assert p.models is not None and p.models.public_names() == ("llama-3.3-70b",)


def test_model_names_are_expanded() -> None:
    p = only(parse(document({"p": provider(models={"fast": "${FAST_MODEL:-small}"})})))
    assert p.upstream_model("fast") == "small"


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([], "models: expected at least one of model names, got an empty list"),
        ({}, "models: expected at least one model, got an empty map"),
        (
            "gpt-4o",
            "models: expected a list of model names or patterns, or a map public name"
            ' -> upstream name, got "gpt-4o"',
        ),
        (["a", "a"], "models[1]: duplicate model 'a'"),
        (["a", 1.5], "models[1]: expected a string, got 1.5"),
        (["a", " "], "models[1]: expected a model name, got an empty string"),
        ({"a": "x*"}, "models.a: the upstream name must be a model name, not a pattern"),
        ({"a": None}, "models.a: expected a string, got null"),
        ({"a": "${UNSET}"}, "models.a: expected a model name, got an empty string"),
        ({1: "x"}, "models: model names must be non-empty strings, got 1"),
    ],
)
def test_model_rules(models: object, message: str) -> None:
    assert error(document({"p": provider(models=models)})) == f"providers.p.{message}"


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


# --- providers: headers, auth, weight, paths, continuation ----------------------------------


def test_headers_are_expanded_and_empty_ones_dropped() -> None:
    headers = {
        "anthropic-version": "2023-06-01",
        "OpenAI-Organization": "${ORG:-}",
        "X-Team": "${TEAM}",
    }
    p = only(parse(document({"p": provider(headers=headers)}), TEAM="blue"))
    assert p.headers == (("anthropic-version", "2023-06-01"), ("X-Team", "blue"))


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Bad Name": "x"}, 'headers: not a valid header name: "Bad Name"'),
        (
            {"X-A": "a\r\nInjected: 1"},
            "headers.X-A: must not contain line breaks or control characters",
        ),
        ({"X-A": "a", "x-a": "b"}, "headers.x-a: duplicate header (names are case-insensitive)"),
        ({"X-A": 5}, "headers.X-A: expected a string, got a number"),
        (["X-A: b"], "headers: expected a map of header name -> value, got a list"),
    ],
)
def test_header_rules(headers: object, message: str) -> None:
    assert error(document({"p": provider(headers=headers)})) == f"providers.p.{message}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer", AuthHeader(name="Authorization", prefix="Bearer ")),
        ("api-key", AuthHeader(name="api-key", prefix="")),
        ("x-api-key:", AuthHeader(name="x-api-key", prefix="")),
        ("  Authorization :  Token  ", AuthHeader(name="Authorization", prefix="Token ")),
    ],
)
def test_auth_header(text: str, expected: AuthHeader) -> None:
    assert only(parse(document({"p": provider(auth_header=text)}))).auth_header == expected


@pytest.mark.parametrize("text", ["", ": Bearer", "Bad Name: x", "X: a\nb"])
def test_bad_auth_header(text: str) -> None:
    assert error(document({"p": provider(auth_header=text)})).startswith(
        'providers.p.auth_header: expected "Header-Name" or "Header-Name: Prefix"'
    )


def test_weight() -> None:
    assert only(parse(document({"p": provider(weight=2.5)}))).weight == 2.5
    assert error(document({"p": provider(weight=-1)})) == "providers.p.weight: must be > 0, got -1"


def test_paths_are_normalised() -> None:
    paths = ["chat/completions", "/embeddings", "/v1/responses", "v1/completions/"]
    p = only(parse(document({"p": provider(paths=paths)})))
    assert p.paths == frozenset({"chat/completions", "embeddings", "responses", "completions"})
    assert p.serves_path("embeddings") and not p.serves_path("audio/speech")


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ([], "paths: expected at least one of API paths, got an empty list"),
        ("chat/completions", "paths: expected a list of API paths, got a string"),
        (["/v1/"], "paths[0]: expected an API path such as chat/completions"),
    ],
)
def test_path_rules(paths: object, message: str) -> None:
    assert error(document({"p": provider(paths=paths)})) == f"providers.p.{message}"


def test_continuation() -> None:
    p = only(parse(document({"p": provider(continuation="prefill")})))
    assert p.continuation is Continuation.PREFILL
    assert error(document({"p": provider(continuation="yes")})) == (
        'providers.p.continuation: expected one of none, prefill, got "yes"'
    )


# --- secrets --------------------------------------------------------------------------------


def test_secrets_never_show_in_repr_or_str(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server:
          host: 0.0.0.0
          api_keys: ["${PROXY_API_KEY}"]
        providers:
          a:
            base_url: https://a.example/v1
            models: [m]
            keys: ["${A_KEY}", {value: "${B_KEY}", name: team}]
            keys_from_env: ENV_KEY
        """,
    )
    env = {
        "PROXY_API_KEY": SECRET + "-proxy",
        "A_KEY": SECRET + "-a",
        "B_KEY": SECRET + "-b",
        "ENV_KEY_2": SECRET + "-env",
    }
    settings = load_settings(path, env)
    assert len(only(settings).keys) == 3
    for text in (repr(settings), str(settings), repr(only(settings)), repr(settings.server)):
        assert SECRET not in text


def test_secrets_never_show_in_config_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        server:
          host: 0.0.0.0
          api_keys: ["{SECRET} x", 42]
        providers:
          a:
            base_url: "https://u:{SECRET}@a.example/v1"
            models: [m]
            keys:
              - "{SECRET}${{broken"
              - {{value: "{SECRET} x", name: team, {SECRET}: 1}}
              - ["{SECRET}"]
            headers: {{Authorization: "Bearer {SECRET}\\n"}}
            auth_header: 5
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert len(caught.value.errors) >= 7
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


def test_config_error_shape() -> None:
    err = ConfigError(["a: one", "b: two"], "x.yaml")
    assert err.errors == ["a: one", "b: two"]
    assert str(err) == "a: one\nb: two"
    assert err.source == "x.yaml"


def test_parse_settings_is_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PURE_TEST_KEY", "from-os")
    doc = document({"p": provider(keys=["${PURE_TEST_KEY}"])})
    assert (
        only(parse(doc)).disabled_reason
        == "no key: every entry of keys is empty (PURE_TEST_KEY unset)"
    )


def test_a_bad_proxy_key_entry_is_reported_alone() -> None:
    doc = document(server={"host": "0.0.0.0", "api_keys": [f"{SECRET} x"]})
    assert error(doc) == "server.api_keys[0]: must not contain whitespace or control characters"


def test_header_values_are_stripped() -> None:
    p = only(parse(document({"p": provider(headers={"X-Team": "${TEAM}"})}), TEAM="blue\n"))
    assert p.headers == (("X-Team", "blue"),)
