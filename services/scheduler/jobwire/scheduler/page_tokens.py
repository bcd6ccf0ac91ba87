"""Opaque, signed cursors for List: a forged or altered token is refused, not trusted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime
from uuid import UUID

from .errors import InvalidArgument

_MAC_BYTES = 16


class PageTokens:
    """Signs (created_at, id) cursors together with the filters they were made for."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_MAC_BYTES]

    def make(self, *, created_at: datetime, job_id: UUID, filters: str) -> str:
        body = json.dumps([created_at.isoformat(), str(job_id), filters]).encode()
        return base64.urlsafe_b64encode(self._mac(body) + body).decode().rstrip("=")

    def read(self, token: str, *, filters: str) -> tuple[datetime, UUID]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
            if not hmac.compare_digest(mac, self._mac(body)):
                raise ValueError("signature")
            created, job_id, made_for = json.loads(body)
            if made_for != filters:
                raise InvalidArgument("page_token: was made for different filters")
            return datetime.fromisoformat(created), UUID(job_id)
        except InvalidArgument:
            raise
        except (ValueError, TypeError, UnicodeDecodeError):
            raise InvalidArgument("page_token: is not a token this service issued") from None
