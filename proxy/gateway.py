"""The live routing state: one settings object, its compiled table and its key pool.

A `Gateway` is immutable after construction. A reload builds a new one from the new settings
(carrying key and breaker state over from the old pool) and the server swaps a single
reference, so a request keeps the gateway it started with until it ends (SPEC §10).
"""

from __future__ import annotations

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
        # Every upstream key value, longest first: scrubbed from any upstream body we relay.
        self.secrets: tuple[str, ...] = tuple(
            sorted(
                {key.secret.reveal() for p in settings.providers for key in p.keys},
                key=len,
                reverse=True,
            )
        )

    @property
    def ready(self) -> bool:
        return bool(self.table.enabled)
