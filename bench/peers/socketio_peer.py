"""python-socketio, the usual Python choice: an ASGI Socket.IO server on uvicorn, no durability.

`POST /publish` takes Herald's publish body, stamps it with an in-memory counter and a time, and
emits it to every connected client (`sio.emit`, as an application would).

    uvicorn --app-dir bench/peers socketio_peer:app --port P
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import socketio
from fastapi import FastAPI, Request

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
api = FastAPI()
counter = 0


@api.post("/publish")
async def publish(request: Request) -> dict[str, Any]:
    global counter
    body = await request.json()
    counter += 1
    event = {
        "type": body["type"],
        "projectId": body.get("projectId", "bench"),
        "seq": counter,
        "messageId": body.get("messageId") or str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": body["data"],
    }
    await sio.emit("event", event)
    return {"seq": counter}


app = socketio.ASGIApp(sio, other_asgi_app=api)
