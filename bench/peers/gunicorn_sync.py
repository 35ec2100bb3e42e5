# gunicorn settings for bench/run's `gunicorn-sync` peer, for reference: the
# seed's settings with gunicorn's default sync workers (one request at a time
# per worker; sync workers close the connection after each response, so
# `keepalive` has no effect).
import os

bind = os.environ.get("BIND", "127.0.0.1:7001")
workers = int(os.getenv("GUNICORN_WORKERS", 10))
worker_class = "sync"
keepalive = 90
timeout = int(os.getenv("HTTP_SERVE_TIMEOUT_SECONDS", 30))
errorlog = "-"
