"""A Flask app whose sessions live in the local Tandem agent.

Flask-Session's ordinary Redis backend is pointed at the agent's Redis-protocol
endpoint; nothing else changes. Every session write is then held by the agent and
replicated to its partner, so the user keeps the session when this host dies.

    pip install -r requirements.txt
    TANDEM_REDIS_URL=redis://127.0.0.1:6380 PORT=8000 python3 app.py
"""
import os
import socket

import redis
from flask import Flask, jsonify, session
from flask_session import Session

app = Flask(__name__)
app.config.update(
    SESSION_TYPE="redis",
    SESSION_REDIS=redis.Redis.from_url(os.environ.get("TANDEM_REDIS_URL", "redis://127.0.0.1:6380")),
    SESSION_KEY_PREFIX="session:",
    SESSION_PERMANENT=True,
    PERMANENT_SESSION_LIFETIME=int(os.environ.get("SESSION_LIFETIME_SECONDS", "1800")),
)
Session(app)


def state():
    return {
        "visits": session.get("visits", 0),
        "cart": session.get("cart", []),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


@app.get("/")
def index():
    return jsonify(state())


@app.post("/visit")
def visit():
    session["visits"] = session.get("visits", 0) + 1
    return jsonify(state())


@app.post("/cart/<item>")
def add_to_cart(item):
    session["cart"] = session.get("cart", []) + [item]
    return jsonify(state())


@app.post("/logout")
def logout():
    session.clear()
    return jsonify(state())


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))
