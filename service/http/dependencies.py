"""What routes are given: the runtime, and the API-key check."""

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from dipr.service.http.errors import Unauthorized
from dipr.service.runtime import Runtime


# `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread round trip per
# request for what is an attribute read.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

_bearer = HTTPBearer(auto_error=False, description="an API key, when the service has any")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header_key: Annotated[str | None, Security(_api_key_header)],
) -> None:
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return
    offered = (bearer.credentials if bearer else header_key or "").encode()
    # Compare with every key, without stopping early: the time taken says nothing about
    # which key, or how much of one, matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key)
    if not matched:
        raise Unauthorized("missing or wrong API key")


KEYED = [Depends(require_api_key)]


async def check_api_key(request: Request) -> None:
    """`require_api_key` called directly, with the same header readers: for a route that does not
    go through FastAPI's dependency solving (see `routes.pose_served`). Without keys there is
    nothing to read (the readers never refuse: auto_error is off)."""
    if request.app.state.api_keys:
        await require_api_key(request, await _bearer(request), await _api_key_header(request))
