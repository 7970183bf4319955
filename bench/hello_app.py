"""The API baseline: a bare Flask app under the API's own gunicorn settings. It reads a JSON
body when one is posted and answers a small JSON object; no auth, no database, no broker.
`gunicorn -c web/gunicorn_conf.py --reuse-port bench.hello_app:app`."""

from __future__ import annotations

from typing import Any

from flask import Flask, request

app = Flask(__name__)


@app.route("/", methods=["GET", "POST"])
def hello() -> Any:
    if request.method == "POST":
        request.get_json(silent=True)
    return {"hello": "world"}
