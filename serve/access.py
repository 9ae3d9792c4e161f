"""Who may call what, checked before a body is read: the API key for scoring, the feedback key (or,
without one, the API key) for labels; and request ids that prove which deployment issued them.

A request id is a random nonce followed by an HMAC tag of it, keyed by the API key's digest. /feedback
accepts a label only for an id whose tag checks out: an id this deployment gave to a holder of the
API key, never a made-up one. Labels sprayed at random ids are refused (422) before they reach the
feedback table, and an id answered under another API key (another deployment) does not verify.
Without an API key the endpoint is open and so is labelling: the tag is then keyed by the registered
model's name, which only tells this deployment's ids from typos and other models' ids.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from pipelines.adapters.ray_serve import api_key_digest

NONCE_HEX = 24  # 96 random bits: no two requests share an id in any realistic lifetime
TAG_HEX = 16  # 64 bits of HMAC: guessing a valid id for a nonce takes ~2^63 tries
REQUEST_ID_LENGTH = NONCE_HEX + TAG_HEX


@dataclass(frozen=True)
class Access:
    """The digests a deployment checks: `api` guards every route but /health (None: open), `feedback`
    guards /feedback instead of `api` when set. `issuer` keys the request ids' tags."""

    api: str | None
    feedback: str | None
    issuer: str

    @classmethod
    def of(cls, api: str | None, feedback: str | None, model_name: str) -> Access:
        return cls(api, feedback, api or hashlib.sha256(f"lakeloop:{model_name}".encode()).hexdigest())

    def required(self, path: str) -> str | None:
        """The digest a request to `path` must present, or None when the route is open."""
        if path.endswith("/health"):
            return None  # load balancer and Kubernetes probes carry no credentials
        if path.endswith("/feedback") and self.feedback:
            return self.feedback
        return self.api

    def allows(self, path: str, authorization: str) -> bool:
        required = self.required(path)
        if required is None:
            return True
        scheme, _, presented = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(api_key_digest(presented.strip()) or "", required)

    def _tag(self, nonce: str) -> str:
        return hmac.new(self.issuer.encode(), nonce.encode(), hashlib.sha256).hexdigest()[:TAG_HEX]

    def new_request_id(self) -> str:
        nonce = secrets.token_hex(NONCE_HEX // 2)
        return nonce + self._tag(nonce)

    def issued(self, request_id: str) -> bool:
        """Whether this deployment gave out `request_id` (to a holder of the API key)."""
        if len(request_id) != REQUEST_ID_LENGTH:
            return False
        nonce, tag = request_id[:NONCE_HEX], request_id[NONCE_HEX:]
        return hmac.compare_digest(self._tag(nonce), tag)
