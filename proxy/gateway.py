"""The live routing state: one settings object, its compiled table and its key pool.

A `Gateway` is immutable after construction. A reload builds a new one from the new settings
(carrying key and breaker state over from the old pool) and the server swaps a single
reference, so a request keeps the gateway it started with until it ends (SPEC §10).
"""

from __future__ import annotations

import re

from proxy.keypool import KeyPool
from proxy.routing import TierTable
from proxy.settings import Settings


class Gateway:
    """Settings, compiled routes and key state that serve requests together."""

    __slots__ = ("pool", "secrets", "settings", "table")

    def __init__(self, settings: Settings, previous: Gateway | None = None) -> None:
        self.settings = settings
        self.table = TierTable(settings)
        self.pool: KeyPool = KeyPool(
            self.table.enabled, previous=previous.pool if previous is not None else None
        )
        # Every upstream credential, longest first (so a key that contains another goes
        # whole): scrubbed from any upstream body we relay, in UTF-8 as bodies are.
        self.secrets: tuple[bytes, ...] = tuple(
            sorted(
                {value.encode() for value in _credentials(settings) if value},
                key=len,
                reverse=True,
            )
        )

    @property
    def ready(self) -> bool:
        return bool(self.table.enabled)


# A provider's extra header is a credential when its name says so (`x-goog-api-key`,
# `x-extra-token`, `Cookie`, ...); other values (`anthropic-version: 2023-06-01`) are not
# secrets, and scrubbing them would garble ordinary text.
_CREDENTIAL_NAME = re.compile(r"key|token|secret|auth|passw|cookie|signature|credential", re.I)


def _credentials(settings: Settings) -> list[str]:
    """Every key value, and the values of provider headers that carry a credential."""
    values = [key.secret.reveal() for p in settings.providers for key in p.keys]
    for provider in settings.providers:
        values += [value for name, value in provider.headers if _CREDENTIAL_NAME.search(name)]
    return values
