# gunicorn settings for bench/run's `gunicorn-eventlet` peer: the seed's
# production gunicorn_config.py (seeds/000) with the bind address from the
# environment. Access log off (the seed only sets --error-logfile -).
import os

bind = os.environ.get("BIND", "127.0.0.1:7001")
workers = int(os.getenv("GUNICORN_WORKERS", 10))
worker_class = "eventlet"
worker_connections = 1000
keepalive = 90
timeout = int(os.getenv("HTTP_SERVE_TIMEOUT_SECONDS", 30))
errorlog = "-"
