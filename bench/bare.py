"""The ingress benchmark's floor: a bare FastAPI POST route that answers 200."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.post("/webhook")
async def webhook() -> dict[str, bool]:
    return {"ok": True}
