"""The seed app for bench/run's production-path scenario (`recipient`): a small
Flask app doing what the Document Download Frontend's views do, written for the
benchmark (none of DDF's code), served the way the seed serves DDF (gunicorn with
gunicorn_eventlet.py's settings, behind nginx).

Per page, as DDF's views (app/main/views/index.py) do:

- `GET /d/<service>/<document>?key=K` (landing), `GET|POST
  /d/<service>/<document>/confirm-email-address?key=K` and `GET
  /d/<service>/<document>/download?key=K`, with the ids as URL-safe base64 UUIDs;
- each calls the Notify API `GET {API_HOST_NAME}/service/<id>` with a fresh HS256
  token (as notifications-python-client signs one per call), then the document API
  `GET {DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL}/services/<s>/documents/<d>/check`,
  each with `requests` and no session (a new connection per call, as both of
  DDF's clients make);
- the confirm POST checks the address through the document API's `/authenticate`
  and answers 302 to the download page with the `document_access_signed_data`
  cookie (domain and path as DDF sets them);
- every page is a Jinja2 template (ddf_templates/) through macros shaped like
  govuk-frontend-jinja's, with DDF's response headers (CSP with a per-request nonce,
  HSTS, …), and one JSON log line per request, as notifications-utils' request
  logging writes.

Simplified: the form is plain Flask (no Flask-WTF/WTForms) with a Flask-WTF-like
CSRF token (a secret in Flask's signed session cookie, the token an itsdangerous
timed signature of it, valid an hour); the email check is a regular expression
rather than notifications-utils' validator; no Prometheus metrics (GDSMetrics),
only an in-process count; error pages are one template.
"""
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import time
import uuid
from datetime import date, timedelta
from urllib.parse import urlsplit

import requests
from flask import Flask, abort, redirect, render_template, request, session, url_for
from itsdangerous import BadData, URLSafeTimedSerializer
from markupsafe import Markup
from werkzeug.routing import BaseConverter, ValidationError

app = Flask(__name__, template_folder=os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddf_templates"))
# Keys from the environment the harness sets, else random for this process:
# none is written here (crates/config/tests/shipped_secrets.rs checks that no
# key value ships in the repository).
app.config.update({
    "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32),
    "ADMIN_CLIENT_SECRET": os.environ.get("ADMIN_CLIENT_SECRET") or secrets.token_urlsafe(32),
})
app.config.update(
    API_HOST_NAME=os.environ.get("API_HOST_NAME", "http://127.0.0.1:7102"),
    ADMIN_CLIENT_USER_NAME="notify-admin",
    DOCUMENT_DOWNLOAD_API_HOST_NAME=os.environ.get("DOCUMENT_DOWNLOAD_API_HOST_NAME", "http://127.0.0.1:7102"),
    HTTP_PROTOCOL=os.environ.get("HTTP_PROTOCOL", "http"),
    SESSION_COOKIE_NAME="document_download_session",
    SESSION_COOKIE_HTTPONLY=True,
    SESSION_COOKIE_SAMESITE="Lax",
)
app.config["DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL"] = os.environ.get(
    "DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL", app.config["DOCUMENT_DOWNLOAD_API_HOST_NAME"])
app.config["SESSION_COOKIE_SECURE"] = app.config["HTTP_PROTOCOL"] == "https"

log = logging.getLogger("ddf")
log.setLevel(logging.INFO)
_handler = logging.StreamHandler(sys.stdout)
_handler.setFormatter(logging.Formatter("%(message)s"))
log.addHandler(_handler)
log.propagate = False

REQUESTS_SERVED = {}

EMAIL = re.compile(r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@([a-zA-Z0-9-]+\.)+[a-zA-Z]{2,}$")
CSRF_MAX_AGE = 3600


class Base64UUIDConverter(BaseConverter):
    """`<base64_uuid:x>`: 22 characters of URL-safe base64 without padding."""

    def to_python(self, value):
        try:
            return uuid.UUID(bytes=base64.urlsafe_b64decode(value + "=="))
        except (ValueError, TypeError) as e:
            raise ValidationError from e

    def to_url(self, value):
        return base64.urlsafe_b64encode(value.bytes).decode("ascii").rstrip("=")


app.url_map.converters["base64_uuid"] = Base64UUIDConverter

_asset_hashes = {}


def asset_url(path):
    """/static/<path>?<hash>, as DDF's asset fingerprinter links its assets."""
    if path not in _asset_hashes:
        _asset_hashes[path] = hashlib.md5(path.encode()).hexdigest()  # noqa: S324 (a fingerprint)
    return f"/static/{path}?{_asset_hashes[path]}"


@app.context_processor
def template_globals():
    return {"asset_url": asset_url, "csp_nonce": request.csp_nonce}


@app.before_request
def before():
    request.csp_nonce = secrets.token_urlsafe(16)
    request.started = time.perf_counter()


@app.after_request
def useful_headers(response):
    h = response.headers
    h["X-Robots-Tag"] = "noindex, nofollow"
    h["X-Frame-Options"] = "DENY"
    h["X-Content-Type-Options"] = "nosniff"
    h["X-Permitted-Cross-Domain-Policies"] = "none"
    h["Referrer-Policy"] = "no-referrer"
    nonce = getattr(request, "csp_nonce", "")
    h["Content-Security-Policy"] = (
        "default-src 'self';"
        f"script-src 'self' 'nonce-{nonce}';"
        "connect-src 'self';object-src 'self';font-src 'self' data:;img-src 'self' data:;"
        f"style-src 'self' 'nonce-{nonce}';"
        "frame-ancestors 'self';frame-src 'self';"
    )
    h["Cache-Control"] = "no-store, no-cache, private, must-revalidate"
    h["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains; preload"
    h["Cross-Origin-Embedder-Policy"] = "require-corp;"
    h["Cross-Origin-Opener-Policy"] = "same-origin;"
    h["Cross-Origin-Resource-Policy"] = "same-origin;"
    h["Permissions-Policy"] = "geolocation=(), microphone=(), camera=(), autoplay=(), payment=(), sync-xhr=()"
    return response


@app.after_request
def log_request(response):
    # notifications-utils logs every request: one JSON line with its timing.
    elapsed = time.perf_counter() - getattr(request, "started", time.perf_counter())
    endpoint = request.endpoint or "unknown"
    REQUESTS_SERVED[endpoint] = REQUESTS_SERVED.get(endpoint, 0) + 1
    log.info(json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "levelname": "INFO", "name": "app",
        "message": f"{request.method} {request.path} {response.status_code}", "method": request.method,
        "url": request.path, "endpoint": endpoint, "status": response.status_code,
        "request_time": round(elapsed, 6), "process_": os.getpid(),
        "user_agent": request.headers.get("User-Agent", ""),
    }))
    return response


def _b64(data):
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def notify_api_token():
    """An HS256 JWT as notifications-python-client makes one per request."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}).encode())
    claims = _b64(json.dumps({"iss": app.config["ADMIN_CLIENT_USER_NAME"], "iat": int(time.time())}).encode())
    signing_input = f"{header}.{claims}".encode()
    signature = hmac.new(app.config["ADMIN_CLIENT_SECRET"].encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


def get_service(service_id):
    response = requests.get(
        f"{app.config['API_HOST_NAME']}/service/{service_id}",
        headers={"Content-type": "application/json", "Authorization": f"Bearer {notify_api_token()}",
                 "User-agent": "NOTIFY-API-PYTHON-CLIENT/10.0.0"},
        timeout=30,
    )
    if response.status_code >= 400:
        abort(response.status_code)
    return response.json()


def get_document_metadata(service_id, document_id, key):
    response = requests.get(
        f"{app.config['DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL']}/services/{service_id}/documents/"
        f"{document_id}/check?key={key}")
    if response.status_code == 400:
        error = response.json().get("error", "")
        if "decryption key" in error or "Forbidden" in error:
            abort(404)
    elif response.status_code in (403, 404):
        abort(404)
    elif response.status_code == 410:
        abort(410)
    response.raise_for_status()
    metadata = response.json().get("document")
    if metadata is None or (metadata["available_until"]
                            and date.fromisoformat(metadata["available_until"][:10]) < date.today()):
        abort(410)
    return metadata


def authenticate(service_id, document_id, key, email_address):
    response = requests.post(
        f"{app.config['DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL']}/services/{service_id}/documents/"
        f"{document_id}/authenticate",
        json={"key": key, "email_address": email_address},
    )
    if response.status_code == 429:
        abort(429)
    if response.status_code in (400, 403):
        return None
    data = response.json()
    response.raise_for_status()
    return {"signed_data": data["signed_data"], "cookie_path": urlsplit(data["direct_file_url"]).path}


def contact_type(info):
    if EMAIL.match(info or ""):
        return "email"
    return "link" if (info or "").startswith("http") else "other"


def service_context(service_id):
    service = get_service(service_id)["data"]
    return {"service_name": service["name"], "service_contact_info": service["contact_link"],
            "contact_info_type": contact_type(service["contact_link"])}


def metadata_or_page(service_id, document_id, key, context):
    """The document's metadata, or the 'file unavailable' page for a 404/410."""
    try:
        return get_document_metadata(service_id, document_id, key), None
    except Exception as e:  # werkzeug's HTTPException from abort()
        code = getattr(e, "code", None)
        if code in (404, 410):
            return None, (render_template("unavailable.html", status_code=code, **context), code)
        raise


def format_file_size(n):
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{round(n / 1024)}KB"
    return f"{round(n / 1024 / 1024, 1)}MB"


def format_expiry(available_until):
    d = date.fromisoformat(available_until[:10])
    text = d.strftime("%d %B %Y").lstrip("0")
    return f"{d.strftime('%A')} {text}" if d - date.today() <= timedelta(days=30) else text


def csrf_serializer():
    return URLSafeTimedSerializer(app.config["SECRET_KEY"], salt="wtf-csrf-token")


def csrf_token():
    """Flask-WTF's scheme: a random secret in the session, the form carries it signed."""
    if "csrf_token" not in session:
        session["csrf_token"] = hashlib.sha1(os.urandom(64)).hexdigest()  # noqa: S324 (as Flask-WTF)
    return csrf_serializer().dumps(session["csrf_token"])


def csrf_valid(token):
    if not token or "csrf_token" not in session:
        return False
    try:
        value = csrf_serializer().loads(token, max_age=CSRF_MAX_AGE)
    except BadData:
        return False
    return hmac.compare_digest(value, session["csrf_token"])


@app.route("/_status")
def status():
    return {"status": "ok"}, 200


@app.route("/d/<base64_uuid:service_id>/<base64_uuid:document_id>", methods=["GET"])
def landing(service_id, document_id):
    key = request.args.get("key")
    if not key:
        abort(404)
    context = service_context(service_id)
    metadata, page = metadata_or_page(service_id, document_id, key, context)
    if page:
        return page
    endpoint = "confirm_email_address" if metadata.get("confirm_email") is True else "download_document"
    continue_url = url_for(endpoint, service_id=service_id, document_id=document_id, key=key)
    return render_template("landing.html", continue_url=continue_url, **context)


@app.route("/d/<base64_uuid:service_id>/<base64_uuid:document_id>/confirm-email-address", methods=["GET", "POST"])
def confirm_email_address(service_id, document_id):
    key = request.args.get("key")
    if not key:
        abort(404)
    context = service_context(service_id)
    metadata, page = metadata_or_page(service_id, document_id, key, context)
    if page:
        return page
    if metadata["confirm_email"] is False:
        return redirect(url_for("download_document", service_id=service_id, document_id=document_id, key=key))
    errors, field_error, email_address = [], None, ""
    if request.method == "POST":
        email_address = "".join((request.form.get("email_address") or "").split())
        if not csrf_valid(request.form.get("csrf_token")):
            errors.append("Your session has expired. Enter your email address again.")
        elif not email_address:
            field_error = "Enter your email address"
        elif not EMAIL.match(email_address):
            field_error = "Not a valid email address"
        else:
            data = authenticate(service_id, document_id, key, email_address)
            if data:
                response = redirect(url_for("download_document", service_id=service_id, document_id=document_id,
                                            key=key))
                response.set_cookie(
                    "document_access_signed_data", data["signed_data"], path=data["cookie_path"],
                    secure=app.config["HTTP_PROTOCOL"] == "https", httponly=True,
                    domain=urlsplit(app.config["DOCUMENT_DOWNLOAD_API_HOST_NAME"].replace(
                        "https://download.", "https://")).hostname,
                )
                return response
            errors.append(Markup(
                "This is not the email address the file was sent to.<br><br>To confirm the file was meant for you, "
                f"enter the email address {context['service_name']} sent the file to."))
        if field_error:
            errors.append(field_error)
    page = render_template("confirm.html", csrf_token=csrf_token(), errors=errors, field_error=field_error,
                           email_address=email_address, **context)
    return page, 400 if errors else 200


@app.route("/d/<base64_uuid:service_id>/<base64_uuid:document_id>/download", methods=["GET"])
def download_document(service_id, document_id):
    key = request.args.get("key")
    if not key:
        abort(404)
    context = service_context(service_id)
    metadata, page = metadata_or_page(service_id, document_id, key, context)
    if page:
        return page
    return render_template(
        "download.html", download_link=metadata["direct_file_url"],
        file_size=format_file_size(metadata["size_in_bytes"]),
        file_type=metadata["file_extension"].upper(),
        file_expiry_date=format_expiry(metadata["available_until"]) if metadata["available_until"] else None,
        **context)


application = app
