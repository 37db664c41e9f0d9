"""A legacy-style multi-tenant FastAPI backend that runs behind realmgate.

The app does no token handling of its own. realmgate verifies the access token against the
tenant's Keycloak realm, enforces the route's permission, strips every identity header the
client sent and sets verified ones. This app only has to:

* refuse a request that carries no tenant (never fall back to a default tenant);
* put the tenant (and user) into the *transaction-local* PostgreSQL settings that the
  row-level-security policies in ``schema.sql`` read;
* narrow ``own``-scope reads to the caller's rows (see README.md, "Scope contract").

It trusts the identity headers, so it must be reachable only through realmgate: bind it to
127.0.0.1 in a sidecar pod, or fence it with a NetworkPolicy.

Run: ``DATABASE_URL=postgresql://qa_app@127.0.0.1/qa uvicorn app:app --host 127.0.0.1 --port 8000``
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field

# The header names realmgate writes by default (its `headers:` config section).
TENANT_HEADER = "x-tenant-id"
USER_HEADER = "x-user-id"
ROLES_HEADER = "x-user-roles"
SCOPE_HEADER = "x-auth-scope"
REALM_HEADER = "x-realm"
REQUEST_ID_HEADER = "x-request-id"

# Narrowest first, as in realmgate's `scopes:` list.
SCOPES = ("own", "team", "tenant")

# Echoed by /api/v1/me for debugging: every header that looks like identity, in any spelling,
# so a forged one that slipped through would be visible.
_IDENTITY_PREFIXES = ("x-tenant", "x-user", "x-auth", "x-realm")

MAX_ID_LEN = 256


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": ...}`` with a stable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Identity:
    tenant: str
    user: str | None
    roles: tuple[str, ...]
    scope: str | None
    realm: str | None


def _single(request: Request, name: str) -> str | None:
    """The one value of a header; a repeated identity header is refused, never guessed."""
    values = request.headers.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "duplicate_identity_header", f"{name} was sent more than once")
    value = values[0].strip()
    if len(value) > MAX_ID_LEN:
        raise ApiError(400, "invalid_identity_header", f"{name} is too long")
    return value or None


def identity(request: Request) -> Identity:
    """Reads the identity realmgate set. No tenant means no request: there is no default."""
    tenant = _single(request, TENANT_HEADER)
    if tenant is None:
        raise ApiError(401, "missing_tenant", "X-Tenant-ID is required")
    roles_raw = _single(request, ROLES_HEADER) or ""
    return Identity(
        tenant=tenant,
        user=_single(request, USER_HEADER),
        roles=tuple(r for r in (x.strip() for x in roles_raw.split(",")) if r),
        scope=_single(request, SCOPE_HEADER),
        realm=_single(request, REALM_HEADER),
    )


def require_user(ident: Identity) -> str:
    if ident.user is None:
        raise ApiError(401, "missing_user", "X-User-ID is required")
    return ident.user


def require_scope(ident: Identity) -> str:
    """The granted scope; missing or unknown fails closed (it would widen nothing by guessing)."""
    if ident.scope is None:
        raise ApiError(403, "missing_scope", "X-Auth-Scope is required")
    if ident.scope not in SCOPES:
        raise ApiError(403, "unknown_scope", f"X-Auth-Scope must be one of {', '.join(SCOPES)}")
    return ident.scope


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        raise RuntimeError("DATABASE_URL is not set (e.g. postgresql://qa_app@127.0.0.1:5432/qa)")
    return url


pool: AsyncConnectionPool | None = None


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global pool
    # autocommit=True: every unit of work is an explicit `conn.transaction()`, so the
    # transaction-local settings below can never outlive the request that made them.
    pool = AsyncConnectionPool(
        _database_url(),
        min_size=1,
        max_size=int(os.environ.get("DB_POOL_SIZE", "10")),
        kwargs={"autocommit": True, "row_factory": dict_row},
        open=False,
        timeout=float(os.environ.get("DB_POOL_TIMEOUT", "5")),
    )
    await pool.open(wait=True, timeout=30)
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(title="realmgate FastAPI + RLS example", lifespan=lifespan)


@app.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)


@asynccontextmanager
async def tenant_tx(ident: Identity) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A transaction with the tenant (and user) set for RLS.

    `set_config(..., true)` is transaction-local: the value is gone at COMMIT/ROLLBACK, so a
    pooled connection handed to the next request (maybe another tenant's) carries nothing
    over. A plain `SET app.current_tenant` would leak across requests.
    """
    if pool is None:
        raise ApiError(503, "not_ready", "the database pool is not open")
    async with pool.connection() as conn:
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('app.current_tenant', %s, true),"
                " set_config('app.current_user', %s, true)",
                (ident.tenant, ident.user or ""),
            )
            yield conn


@app.get("/health")
async def health() -> JSONResponse:
    """Liveness plus a database round trip; public, so it reads no identity."""
    try:
        if pool is None:
            raise RuntimeError("pool not open")
        async with pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure means "not healthy", details stay in logs
        return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "up"})


@app.get("/api/v1/me")
async def me(request: Request, ident: Identity = Depends(identity)) -> dict[str, Any]:
    seen = [
        [name.decode("latin-1"), value.decode("latin-1")]
        for name, value in request.headers.raw
        if name.decode("latin-1").lower().replace("_", "-").startswith(_IDENTITY_PREFIXES)
    ]
    return {
        "tenant": ident.tenant,
        "realm": ident.realm,
        "user": ident.user,
        "roles": list(ident.roles),
        "scope": ident.scope,
        "request_id": request.headers.get(REQUEST_ID_HEADER),
        "identity_headers": seen,
    }


@app.get("/api/v1/calls")
async def list_calls(ident: Identity = Depends(identity)) -> dict[str, Any]:
    scope = require_scope(ident)
    async with tenant_tx(ident) as conn:
        if scope == "own":
            user = require_user(ident)
            cur = await conn.execute(
                "SELECT id, tenant_id, owner_id, subject FROM calls"
                " WHERE owner_id = %s ORDER BY id",
                (user,),
            )
        else:
            # `team` and `tenant`: every row RLS lets through (this schema has no teams).
            cur = await conn.execute(
                "SELECT id, tenant_id, owner_id, subject FROM calls ORDER BY id"
            )
        rows = await cur.fetchall()
    return {"tenant": ident.tenant, "scope": scope, "calls": rows}


class NewCall(BaseModel):
    # The tenant and owner come from realmgate's headers only; a body naming them is refused.
    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=500)


@app.post("/api/v1/calls", status_code=201)
async def create_call(body: NewCall, ident: Identity = Depends(identity)) -> dict[str, Any]:
    user = require_user(ident)
    try:
        async with tenant_tx(ident) as conn:
            cur = await conn.execute(
                "INSERT INTO calls (tenant_id, owner_id, subject) VALUES (%s, %s, %s)"
                " RETURNING id, tenant_id, owner_id, subject",
                (ident.tenant, user, body.subject),
            )
            row = await cur.fetchone()
    except psycopg.errors.InsufficientPrivilege as e:
        # RLS WITH CHECK: the row's tenant is not the transaction's tenant.
        raise ApiError(403, "tenant_mismatch", "the row does not belong to this tenant") from e
    return {"call": row}
