"""Provider building: defaults and their merge, tiers, URLs, endpoints, models, headers,
auth, weights, paths and continuation, each rule with the YAML path its error names."""

from __future__ import annotations

import pytest

from proxy.settings import (
    AuthHeader,
    BreakerSettings,
    Continuation,
    Cooldown,
    Rotation,
    Timeouts,
)
from tests.unit.configdoc import SECRET, document, error, errors, only, parse, provider

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


def test_header_values_are_stripped() -> None:
    p = only(parse(document({"p": provider(headers={"X-Team": "${TEAM}"})}), TEAM="blue\n"))
    assert p.headers == (("X-Team", "blue"),)


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
