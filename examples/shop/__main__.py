"""``python -m examples.shop`` (from the repository root): serve the shop on SHOP_PORT (8080)."""

import os

import uvicorn

from .app import create_app

uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("SHOP_PORT", "8080")))
