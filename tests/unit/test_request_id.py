"""Request ids: the client's when it is usable, else a fresh version-4 UUID in hex."""

from __future__ import annotations

import uuid

from proxy.clientrequest import request_id as _request_id


def test_a_fresh_id_is_a_version_4_uuid_in_hex() -> None:
    ids = {_request_id(None) for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        assert len(value) == 32
        parsed = uuid.UUID(hex=value)
        assert parsed.hex == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_the_clients_id_is_kept_when_printable_ascii_and_short() -> None:
    assert _request_id("trace-123") == "trace-123"
    assert _request_id("x" * 129) != "x" * 129
    assert _request_id("caf\u00e9") != "caf\u00e9"
    assert _request_id("a\nb") != "a\nb"
    assert len(_request_id("")) == 32
