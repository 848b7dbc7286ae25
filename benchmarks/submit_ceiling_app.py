"""The stack's ceiling for a submit (issue 25, item 1): the least a submit can do on DistLM's
pieces, served the way the gateway is served. A sync FastAPI route, a PyJWT HS256 bearer
check, one SQLAlchemy session per request that reads one row and inserts one, on the same
database, under uvicorn. `benchmarks/submit.py` starts it beside the real gateway and loads
both with the same client.

    CEILING_DATABASE_URL=postgresql://... uvicorn submit_ceiling_app:app --workers N
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import jwt
from fastapi import Body, FastAPI, Header, HTTPException
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from app.tcp_nodelay import enable_tcp_nodelay

enable_tcp_nodelay()  # as the gateway does: uvicorn --workers N would leave Nagle on

SECRET = os.environ.get("CEILING_SECRET", "ceiling-secret-of-32-bytes-or-more!!")
engine = create_engine(os.environ.get("CEILING_DATABASE_URL", "sqlite://"))
app = FastAPI()


def make_table() -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE IF NOT EXISTS ceiling_jobs "
                "(id SERIAL PRIMARY KEY, owner TEXT NOT NULL, spec TEXT NOT NULL)"
            )
        )


def token(subject: str) -> str:
    return jwt.encode({"sub": subject}, SECRET, algorithm="HS256")


@app.post("/jobs/submit", status_code=201)
def submit(
    body: Annotated[dict[str, Any], Body()], authorization: Annotated[str, Header()]
) -> dict[str, Any]:
    try:
        claims = jwt.decode(authorization.removeprefix("Bearer "), SECRET, algorithms=["HS256"])
    except jwt.PyJWTError as exc:
        raise HTTPException(401, "bad token") from exc
    with Session(engine) as session, session.begin():
        session.execute(text("SELECT 1"))  # stands for the user's row
        job_id = session.execute(
            text("INSERT INTO ceiling_jobs (owner, spec) VALUES (:owner, :spec) RETURNING id"),
            {"owner": claims["sub"], "spec": json.dumps(body)},
        ).scalar_one()
    return {"id": job_id, "status": "queued"}
