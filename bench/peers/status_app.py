"""The gunicorn peer for bench/run: a Flask app answering GET /_status.

The same answer as the Document Download Frontend's Flask view (a JSON object with
the status, the git commit, the build time and the environment), served the way
the seed (seeds/000) serves the real app: gunicorn with the settings in
gunicorn_eventlet.py or gunicorn_sync.py. Nothing else is routed.
"""
from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/_status")
def status():
    return jsonify(
        status="ok",
        git_commit="abcdef0",
        build_time="2026-11-23T00:00:00Z",
        environment="development",
    )


application = app
