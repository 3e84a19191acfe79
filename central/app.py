"""The application factory: builds the aiohttp app for a Config; no module-level state."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import accounts, api, nodehub, openapi, store, stream  # noqa: F401  (modules register their routes)
from .accesslog import ACCESS_LOG, AccessLog
from .auth import ApiError, Handler, Refusals, auth_middleware, error_response
from .cluster.forward import Forwarder, forward_middleware
from .config import Config
from .dbconn import DatabaseUnavailable
from .routes import install
from .services import SERVICES, services_ctx, stop_presence
from .writer import StorageError

API_MAX_BODY = 256 * 1024


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as the documented JSON body, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except (StorageError, DatabaseUnavailable) as exc:
        # The database is away (a PostgreSQL server down or unreachable, a disk full): nothing was
        # changed; the same request succeeds once it is back.
        return error_response(503, "storage", f"storage unavailable, try again later: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=API_MAX_BODY)
    # Each route's parameters are parsed after the auth middleware below has let the caller in.
    specs = install(app)

    async def lookup(token_hash: str) -> dict[str, Any] | None:
        return await accounts.token_owner(app[SERVICES].read_db, token_hash)

    async def submit(fn: store.WriteFn) -> Any:
        return await app[SERVICES].writer.submit(fn)

    def submit_later(fn: store.WriteFn) -> None:
        app[SERVICES].writer.submit_later(fn)

    access = AccessLog(config.access_log) if config.access_log != "off" else None
    if access is not None:
        app[ACCESS_LOG] = access
    app.middlewares.append(errors_middleware)
    # With replicas: a feature area's call on a replica not leading them goes to the one that does.
    forwarder = Forwarder(lambda replica: app[SERVICES].ca.replica_client_context(replica))
    app.middlewares.append(forward_middleware(specs, lambda a: a[SERVICES].features, forwarder))
    app.on_cleanup.append(forwarder.close)
    refusals = Refusals()
    app.middlewares.append(auth_middleware(specs, lookup, submit, submit_later, refusals, access=access))
    registration = app[accounts.REGISTRATION] = accounts.RegistrationGate(
        config.self_register, config.register_per_address, config.register_total, config.max_pending)
    app.cleanup_ctx.append(services_ctx(config))

    async def share_budgets(app: web.Application) -> None:
        """With replicas, the brute-force budgets are counted with the others (after services_ctx)."""
        refusals.shared = registration.shared = app[SERVICES].attempts

    app.on_startup.append(share_budgets)
    app.on_shutdown.append(stop_presence)  # before the node sockets close (central/services.py)
    # Node websockets served below aiohttp (the listener's upgrade): closed at a stop, their
    # sessions ended, before the services close.
    app[nodehub.NODE_DOOR] = door = nodehub.NodeDoor(app)
    app.on_shutdown.append(door.close_all)
    return app
