"""The floor a FastAPI server reaches: a bare broadcast endpoint, no durability, no ordering guarantee.

FastAPI's documented WebSocket pattern (a list of connections, `await send_text` to each in turn),
with the event serialized once. `POST /publish` takes Herald's publish body, stamps it with an
in-memory counter and a time, and sends it to every connected client before answering.

    uvicorn --app-dir bench/peers broadcast:app --port P
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

app = FastAPI()
connections: list[WebSocket] = []
counter = 0


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    connections.append(websocket)
    await websocket.send_text('{"type":"hello"}')  # tells the client it is registered
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        if websocket in connections:
            connections.remove(websocket)


@app.post("/publish")
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
    text = json.dumps(event)
    for websocket in list(connections):
        try:
            await websocket.send_text(text)
        except Exception:  # a client that went away while we sent
            if websocket in connections:
                connections.remove(websocket)
    return {"seq": counter}
