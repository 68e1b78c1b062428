"""`python -m proxy check`: the compiled routing table as text, never a key value.

For every public model (and every model pattern) it lists the candidates in failover order with
tier, provider, endpoint, upstream model and number of keys, then every disabled provider or
endpoint with the reason, so an operator sees exactly what a request would try.
"""

from __future__ import annotations

from proxy.routing import TierTable
from proxy.settings import Provider, Settings


def _keys(provider: Provider) -> str:
    if not provider.enabled:
        return "-"
    if provider.keyless:
        return "keyless"
    count = len(provider.keys)
    return f"{count} key" + ("" if count == 1 else "s")


def _patterns(settings: Settings) -> list[str]:
    """Glob entries of enabled providers: shown as their own rows, matched literally."""
    seen: dict[str, None] = {}
    for provider in settings.providers:
        if not provider.enabled:
            continue
        if provider.models is not None:
            for rule in provider.models.globs:
                if rule.glob is not None:
                    seen.setdefault(rule.glob.pattern, None)
        else:
            for endpoint in provider.endpoints:
                if endpoint.disabled_reason is None and endpoint.models is not None:
                    for glob in endpoint.models:
                        seen.setdefault(glob.pattern, None)
    return list(seen)


def render_table(settings: Settings, path: str = "chat/completions") -> str:
    table = TierTable(settings)
    lines = [f"config: {settings.source or '(inline)'}", ""]
    lines.append("providers:")
    for provider in sorted(settings.providers, key=lambda p: p.tier):
        state = "enabled" if provider.enabled else f"disabled: {provider.disabled_reason}"
        lines.append(f"  tier {provider.tier}  {provider.name:<14} {_keys(provider):<8} {state}")
        for endpoint in provider.endpoints:
            if endpoint.disabled_reason is not None and provider.enabled:
                lines.append(f"      endpoint disabled: {endpoint.disabled_reason}")
    lines.append("")
    lines.append(f"routes ({path}):")
    names = list(table.public_models)
    patterns = [p for p in _patterns(settings) if p not in names]
    if not names and not patterns:
        lines.append("  (no model is served: every provider is disabled)")
    for name in names + patterns:
        plan = table.plan(name, path)
        label = name if name in names else f"{name}  (pattern)"
        lines.append(f"  {label}")
        if plan.empty:
            lines.append("      (no candidate)")
        order = 0
        for group in plan.tiers:
            for candidate in group:
                order += 1
                p = candidate.provider
                lines.append(
                    f"      {order}. tier {p.tier}  {p.name:<14} {candidate.endpoint.base_url}"
                    f"  -> {candidate.upstream_model}  ({_keys(p)})"
                )
    return "\n".join(lines)
