"""Config loading and validation (SPEC §2): files, the document, typed values, `server` and
secrets, with the path each error names. Providers: test_configprovider, test_configkeys."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from proxy.config import ConfigError, load_settings
from proxy.settings import AuthHeader
from tests.unit.configdoc import SECRET, document, error, errors, only, parse, provider

REPO = Path(__file__).resolve().parents[2]


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
    assert server.max_response_bytes == 64 * 1024 * 1024
    assert (server.shutdown_grace_seconds, server.sse_keepalive_seconds) == (30.0, 15.0)
    assert server.allow_unauthenticated is False


def test_server_fields() -> None:
    doc = document(
        server={
            "host": "0.0.0.0",
            "port": 8080,
            "api_keys": ["${PROXY_API_KEY}", "${SECOND:-}", "", "${PROXY_API_KEY}"],
            "max_body_bytes": 1024,
            "max_response_bytes": "${ANSWER_CAP:-1048576}",
            "shutdown_grace_seconds": 0,
            "sse_keepalive_seconds": 0.5,
        }
    )
    server = parse(doc, PROXY_API_KEY="proxy-key").server
    assert (server.host, server.port) == ("0.0.0.0", 8080)
    assert [secret.reveal() for secret in server.api_keys] == ["proxy-key"]
    assert (server.max_body_bytes, server.shutdown_grace_seconds) == (1024, 0.0)
    assert server.max_response_bytes == 1048576
    assert server.sse_keepalive_seconds == 0.5


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_body_bytes", 0, "must be >= 1, got 0"),
        ("max_response_bytes", 0, "must be >= 1, got 0"),
        ("max_response_bytes", -5, "must be >= 1, got -5"),
        ("max_response_bytes", 1.5, "expected an integer, got 1.5"),
        ("max_response_bytes", "64MiB", 'expected an integer, got "64MiB"'),
        ("max_response_bytes", True, "expected an integer, got true"),
        ("max_response_bytes", None, "expected an integer, got null"),
        ("max_response_byte", 1, "unknown field; did you mean 'max_response_bytes'?"),
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
