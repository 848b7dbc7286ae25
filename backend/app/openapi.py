"""Document, on every route, the error statuses that the shared machinery answers.

Some statuses do not come from a route's own service but from what every request passes
through: the request middleware (413 body over 1 MB, 431 headers too large, 422 JSON nested
too deep), request validation (422), bearer authentication (401), role gates (403) and ids in
paths (404 unknown id, 422 not an id). They are derived here from each route's dependencies
and parameters, once, so the OpenAPI document cannot drift from the code; what a service
raises on its own (402, 409, 429, ...) each route declares in its ``responses=``. All of them
carry the one error shape (``ErrorOut``), which replaces FastAPI's default 422 schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.deps import get_current_user, get_node_caller
from app.errors import error_responses

BODY_METHODS = {"POST", "PUT", "PATCH"}
AUTHENTICATING: set[Callable[..., Any]] = {get_current_user, get_node_caller}


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for dependency in dependant.dependencies:
        yield from _dependants(dependency)


def machinery_statuses(route: APIRoute) -> set[int]:
    dependants = list(_dependants(route.dependant))
    calls = {d.call for d in dependants[1:] if d.call is not None}
    statuses = {431}
    if route.methods & BODY_METHODS:
        statuses |= {413, 422}
    if any(d.body_params for d in dependants):
        statuses |= {400, 422}  # 400: a body that cannot be read as its Content-Type says
    if any(d.path_params for d in dependants):
        statuses |= {404, 422}
    if any(d.query_params or d.header_params or d.cookie_params for d in dependants):
        statuses.add(422)
    if calls & AUTHENTICATING:
        statuses.add(401)
    if any(hasattr(call, "required_roles") for call in calls):
        statuses.add(403)
    return statuses


def document_error_responses(router: APIRouter) -> None:
    """Add the derived error statuses to the documented responses of each of the router's
    routes (a route's own `responses=` entry for a status wins). Call it before the router is
    included: the app builds its routes from these, responses included."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        for status, response in error_responses(*sorted(machinery_statuses(route))).items():
            if status not in route.responses and str(status) not in route.responses:
                route.responses[status] = response
