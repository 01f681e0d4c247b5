"""The auditor's routes over HTTP: verifying a project's chain (docs/protocol.md, "Audit").

Verifying reads the whole log of a project through a server-side cursor in one snapshot: memory stays
flat, and the appends going on meanwhile neither wait for it nor change what it sees.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from .. import audit
from ..messages import ChainBroken, ChainIntact
from .dependencies import Auth, DatabaseDep, require
from .errors import ERRORS, project_missing
from .http import json_response

router = APIRouter()


@router.get(
    "/api/projects/{project_id}/audit/verify",
    response_model=ChainIntact | ChainBroken,
    responses=ERRORS,
    tags=["audit"],
)
async def verify(project_id: str, principal: Auth, database: DatabaseDep) -> Response:
    """Recompute the project's hash chain (audit): intact through the head, or the first bad seq."""
    require(principal, "audit", project_id)
    async with database.connection() as conn:
        try:
            verdict = await audit.verify(conn, project_id)
        except audit.NoSuchProject:
            raise project_missing(project_id) from None
    return json_response(verdict.to_dict())
