"""The source API's optional bearer token (RFC 6750): when BATCHMESH_SOURCE_TOKEN (or the file named by
BATCHMESH_SOURCE_TOKEN_FILE, a mounted Kubernetes Secret) is set, every /api/v1 route wants
`Authorization: Bearer <token>`; without it, or with another token, the answer is 401 with
`WWW-Authenticate: Bearer` (and `error="invalid_token"` for a wrong one). The comparison is constant-time
(hmac.compare_digest over the UTF-8 bytes), so the answer's timing does not tell how much of a guess was right.

/healthz (the probes of compose and Kubernetes) and /metrics (request and skipped-record counters, no item data)
stay open, so neither a kubelet nor Prometheus needs the token. The OpenAPI document declares the scheme
(`components.securitySchemes.bearer`, and `security` on each /api/v1 operation)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.core.masking import source_token as load_token

__all__ = ["SCHEME", "load_token", "require_token"]

SCHEME = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="The source token (BATCHMESH_SOURCE_TOKEN), when the source is started with one")


def require_token(token: str | None) -> list[DependsParam]:
    """The dependencies of a protected route: none without a token (the API stays open, as before)."""
    if not token:
        return []
    expected = token.encode()

    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(SCHEME)]) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(errors="surrogateescape"), expected):
            raise HTTPException(401, "invalid token",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    return [Depends(check)]
