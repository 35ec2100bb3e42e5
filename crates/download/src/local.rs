//! The built-in local document API and service directory, for development:
//! the same routes and answers as the real document download API, backed by a
//! directory, so the whole flow runs offline.
//!
//! Layout of the directory:
//!
//! ```text
//! services.json                               {"<service uuid>": {"name": …, "contact_link": …}}
//! documents/<service uuid>/<document uuid>.json  {"key", "filename", "mimetype",
//!                                              "confirm_email_address", "available_until",
//!                                              "blocked" (optional)}
//! documents/<service uuid>/<document uuid>.<extension>   the file
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::html::url_encode;
use crate::ids::{encode_url_safe, Uuid};
use crate::present::{Clock, Date, ServiceInfo};
use crate::signing::{hmac_sha256, verify};
use crate::upstream::Answer;

/// The cookie the frontend sets and the file route reads.
pub(crate) const ACCESS_COOKIE: &str = "document_access_signed_data";

/// The `Cache-Control`s the real API sends: on `/services/_status`, and on
/// `/check` (30 minutes, so the frontend may cache the metadata).
pub(crate) const CACHE_CONTROLS: [&str; 2] = [
    "no-store, no-cache, private, must-revalidate",
    "max-age=1800",
];

/// The real API's error for a document it does not have.
const NOT_FOUND: &str = "The requested document could not be found";
/// What the real API answers (400) when S3 refuses the key: botocore's
/// error dictionary, as Python prints it.
const WRONG_KEY: &str = "{'Code': '403', 'Message': 'Forbidden'}";
/// Extensions the real API sends as attachments (`FILE_TYPES_TO_FORCE_DOWNLOAD_FOR`).
const FORCE_DOWNLOAD: [&str; 3] = ["csv", "rtf", "txt"];

/// Attempts to authenticate one document allowed per window (the real API's
/// default is of this order).
const AUTH_RATE_LIMIT: usize = 50;
const AUTH_RATE_WINDOW: Duration = Duration::from_secs(300);

/// Why the local API could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalApiError {
    /// The directory could not be read or written.
    #[error("local document directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A metadata file is not valid.
    #[error("local document metadata {path}: {message}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The operating system's random generator failed, so there is no key to
    /// sign access cookies with (none is made up from anything else).
    #[error("local document API signing key: the OS random generator failed: {0}")]
    Random(#[source] getrandom::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DocumentFile {
    key: String,
    filename: String,
    mimetype: String,
    confirm_email_address: Option<String>,
    available_until: Option<String>,
    /// The real store's `blocked` tag: a document a service sent by mistake.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    blocked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ServiceFile {
    name: String,
    contact_link: Option<String>,
}

#[derive(Debug, Clone)]
struct LocalDocument {
    meta: DocumentFile,
    extension: String,
    path: PathBuf,
    size: u64,
}

/// A seeded sample document, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleDocument {
    /// What it shows.
    pub description: &'static str,
    /// The frontend path with its key: `/d/{service}/{document}?key=…`.
    pub path: String,
    /// The email address to confirm, when the document asks for one.
    pub confirm_email_address: Option<String>,
}

/// The local document API and service directory.
pub struct LocalApi {
    dir: PathBuf,
    services: HashMap<Uuid, ServiceFile>,
    documents: HashMap<(Uuid, Uuid), LocalDocument>,
    signing_key: [u8; 32],
    /// Prefix of `direct_file_url`: empty for same-origin relative URLs.
    public_base: String,
    attempts: Mutex<HashMap<(Uuid, Uuid), VecDeque<Instant>>>,
    samples: Vec<SampleDocument>,
    /// Today, for documents past their `available_until`.
    clock: Clock,
}

impl std::fmt::Debug for LocalApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApi")
            .field("dir", &self.dir)
            .field("services", &self.services.len())
            .field("documents", &self.documents.len())
            .finish_non_exhaustive()
    }
}

/// The sample service and documents (stable ids and keys, so their URLs
/// survive restarts).
const SAMPLE_SERVICE: &str = "8d3a4e2c-6b1f-4c5e-9a7d-2f0e1b3c4d5e";
const SAMPLE_PLAIN: &str = "1c9f5e7a-3b2d-4e6f-8a1b-9c0d2e4f6a8b";
const SAMPLE_CONFIRM: &str = "7e2b9d4c-5a1f-4b3e-9c8d-6f0a2b4c6d8e";
const SAMPLE_PLAIN_KEY: &str = "c2FtcGxlLWtleS1mb3ItdGhlLXBsYWluLWRvY3VtZW50";
const SAMPLE_CONFIRM_KEY: &str = "c2FtcGxlLWtleS1mb3ItdGhlLWNvbmZpcm0tZG9jdW1lbnQ";
/// The address the confirm-email sample was "sent to".
pub const SAMPLE_EMAIL_ADDRESS: &str = "test@example.gov.uk";
/// The bytes of the confirm-email sample (`sample.txt`).
pub const SAMPLE_CONFIRM_CONTENT: &str =
    "This is the sample file that needs email confirmation.\nIt was served by wharf's local document API.\n";
const SAMPLE_PLAIN_CONTENT: &str = "name,department\nSample Person,Cabinet Office\n";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LocalApiError + '_ {
    move |source| LocalApiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn extension_for(mimetype: &str, filename: &str) -> String {
    match mimetype {
        "application/pdf" => "pdf".into(),
        "text/csv" => "csv".into(),
        "text/plain" => "txt".into(),
        "application/msword" => "doc".into(),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx".into(),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx".into(),
        "application/vnd.oasis.opendocument.text" => "odt".into(),
        "application/rtf" | "text/rtf" => "rtf".into(),
        "image/png" => "png".into(),
        "image/jpeg" => "jpeg".into(),
        "application/json" => "json".into(),
        _ => filename
            .rsplit_once('.')
            .map_or("bin", |(_, e)| e)
            .to_ascii_lowercase(),
    }
}

impl LocalApi {
    /// Opens `dir` (created if missing), writes the two sample documents (with
    /// expiry dates 14 days after `clock`'s today) and loads every document.
    pub fn open(dir: &Path, clock: &Clock) -> Result<Self, LocalApiError> {
        Self::seed(dir, clock.today())?;
        let mut api = Self::load(dir, clock.clone())?;
        let service: Uuid = SAMPLE_SERVICE.parse().unwrap_or(Uuid::from_bytes([1; 16]));
        let plain: Uuid = SAMPLE_PLAIN.parse().unwrap_or(Uuid::from_bytes([2; 16]));
        let confirm: Uuid = SAMPLE_CONFIRM.parse().unwrap_or(Uuid::from_bytes([3; 16]));
        api.samples = vec![
            SampleDocument {
                description: "a file that does not need email confirmation",
                path: frontend_path(service, plain, SAMPLE_PLAIN_KEY),
                confirm_email_address: None,
            },
            SampleDocument {
                description: "a file that needs email confirmation",
                path: frontend_path(service, confirm, SAMPLE_CONFIRM_KEY),
                confirm_email_address: Some(SAMPLE_EMAIL_ADDRESS.to_owned()),
            },
        ];
        Ok(api)
    }

    /// Makes `direct_file_url`s absolute on `base` (e.g. `http://127.0.0.1:7002`)
    /// for a local API served on its own port; by default they are relative.
    #[must_use]
    pub fn with_public_base(mut self, base: &str) -> Self {
        base.trim_end_matches('/').clone_into(&mut self.public_base);
        self
    }

    /// The seeded samples.
    pub fn samples(&self) -> &[SampleDocument] {
        &self.samples
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn seed(dir: &Path, today: Date) -> Result<(), LocalApiError> {
        let service_dir = dir.join("documents").join(SAMPLE_SERVICE);
        std::fs::create_dir_all(&service_dir).map_err(io_error(&service_dir))?;
        let services_path = dir.join("services.json");
        let mut services: HashMap<String, ServiceFile> = match std::fs::read(&services_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LocalApiError::Metadata {
                path: services_path.clone(),
                message: e.to_string(),
            })?,
            Err(_) => HashMap::new(),
        };
        services.insert(
            SAMPLE_SERVICE.to_owned(),
            ServiceFile {
                name: "Sample Service".to_owned(),
                contact_link: Some("https://www.gov.uk/contact".to_owned()),
            },
        );
        write_json(&services_path, &services)?;
        let until = today.add_days(14).to_string();
        for (id, key, filename, mimetype, email, content) in [
            (
                SAMPLE_PLAIN,
                SAMPLE_PLAIN_KEY,
                "sample.csv",
                "text/csv",
                None,
                SAMPLE_PLAIN_CONTENT,
            ),
            (
                SAMPLE_CONFIRM,
                SAMPLE_CONFIRM_KEY,
                "sample.txt",
                "text/plain",
                Some(SAMPLE_EMAIL_ADDRESS),
                SAMPLE_CONFIRM_CONTENT,
            ),
        ] {
            let meta = DocumentFile {
                key: key.to_owned(),
                filename: filename.to_owned(),
                mimetype: mimetype.to_owned(),
                confirm_email_address: email.map(str::to_owned),
                available_until: Some(until.clone()),
                blocked: false,
            };
            write_json(&service_dir.join(format!("{id}.json")), &meta)?;
            let file = service_dir.join(format!("{id}.{}", extension_for(mimetype, filename)));
            write_atomic(&file, content.as_bytes())?;
        }
        Ok(())
    }

    fn load(dir: &Path, clock: Clock) -> Result<Self, LocalApiError> {
        let services_path = dir.join("services.json");
        let bytes = std::fs::read(&services_path).map_err(io_error(&services_path))?;
        let raw: HashMap<String, ServiceFile> =
            serde_json::from_slice(&bytes).map_err(|e| LocalApiError::Metadata {
                path: services_path.clone(),
                message: e.to_string(),
            })?;
        let services = raw
            .into_iter()
            .filter_map(|(id, service)| Some((id.parse().ok()?, service)))
            .collect();
        let mut documents = HashMap::new();
        let root = dir.join("documents");
        for service_entry in std::fs::read_dir(&root).map_err(io_error(&root))? {
            let service_entry = service_entry.map_err(io_error(&root))?;
            let Some(service) = service_entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<Uuid>().ok())
            else {
                continue;
            };
            let service_dir = service_entry.path();
            for entry in std::fs::read_dir(&service_dir).map_err(io_error(&service_dir))? {
                let path = entry.map_err(io_error(&service_dir))?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let Some(document) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<Uuid>().ok())
                else {
                    continue;
                };
                let bytes = std::fs::read(&path).map_err(io_error(&path))?;
                let meta: DocumentFile =
                    serde_json::from_slice(&bytes).map_err(|e| LocalApiError::Metadata {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                let extension = extension_for(&meta.mimetype, &meta.filename);
                let file = service_dir.join(format!("{document}.{extension}"));
                let size = std::fs::metadata(&file).map_err(io_error(&file))?.len();
                documents.insert(
                    (service, document),
                    LocalDocument {
                        meta,
                        extension,
                        path: file,
                        size,
                    },
                );
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            services,
            documents,
            signing_key: shared_signing_key(dir)?,
            public_base: String::new(),
            attempts: Mutex::new(HashMap::new()),
            samples: Vec::new(),
            clock,
        })
    }

    pub(crate) fn service(&self, id: Uuid) -> Option<ServiceInfo> {
        self.services.get(&id).map(|s| ServiceInfo {
            name: s.name.clone(),
            contact_link: s.contact_link.clone(),
        })
    }

    fn direct_file_url(&self, service: Uuid, document: Uuid, doc: &LocalDocument) -> String {
        format!(
            "{}/services/{service}/documents/{document}.{}?key={}",
            self.public_base,
            doc.extension,
            url_encode(&doc.meta.key)
        )
    }

    /// The document `key` opens, or the real API's answer when there is
    /// none, in the order its document store checks: the object (404), its
    /// `blocked` tag (403), the key (S3 refuses a wrong SSE-C key; the API
    /// passes the botocore error on as a 400), its expiry (410).
    fn find(
        &self,
        service: Uuid,
        document: Uuid,
        key: Option<&str>,
    ) -> Result<&LocalDocument, Box<Answer>> {
        let key = decryption_key(key)?;
        let Some(doc) = self.documents.get(&(service, document)) else {
            return Err(Box::new(error(StatusCode::NOT_FOUND, NOT_FOUND)));
        };
        if doc.meta.blocked {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "Access to the document has been blocked",
            )));
        }
        if doc.meta.key != key {
            return Err(Box::new(error(StatusCode::BAD_REQUEST, WRONG_KEY)));
        }
        let expired = doc
            .meta
            .available_until
            .as_deref()
            .and_then(Date::parse_iso_prefix)
            .is_some_and(|until| until < self.clock.today());
        if expired {
            return Err(Box::new(error(
                StatusCode::GONE,
                "The document is no longer available",
            )));
        }
        Ok(doc)
    }

    /// `GET /services/_status`.
    pub(crate) fn status() -> Answer {
        let mut answer = json_answer(StatusCode::OK, &serde_json::json!({"status": "ok"}));
        answer.headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROLS[0]),
        );
        answer
    }

    /// `GET /services/{s}/documents/{d}/check?key=K`.
    pub(crate) fn check(&self, service: Uuid, document: Uuid, key: Option<&str>) -> Answer {
        let doc = match self.find(service, document, key) {
            Err(answer) => return *answer,
            Ok(doc) => doc,
        };
        let mut answer = json_answer(
            StatusCode::OK,
            &serde_json::json!({ "document": {
                "direct_file_url": self.direct_file_url(service, document, doc),
                "confirm_email": doc.meta.confirm_email_address.is_some(),
                "size_in_bytes": doc.size,
                "file_extension": doc.extension,
                "filename": doc.meta.filename,
                "available_until": doc.meta.available_until,
            }}),
        );
        not_for_robots(&mut answer.headers);
        // The real API lets the frontend cache the answer for 30 minutes.
        answer.headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROLS[1]),
        );
        answer
    }

    fn rate_limited(&self, service: Uuid, document: Uuid) -> bool {
        let Ok(mut attempts) = self.attempts.lock() else {
            return false;
        };
        let now = Instant::now();
        let window = attempts.entry((service, document)).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) > AUTH_RATE_WINDOW)
        {
            window.pop_front();
        }
        window.push_back(now);
        window.len() > AUTH_RATE_LIMIT
    }

    /// `POST /services/{s}/documents/{d}/authenticate` with `{key, email_address}`.
    pub(crate) fn authenticate(
        &self,
        service: Uuid,
        document: Uuid,
        body: &serde_json::Value,
    ) -> Answer {
        if self.rate_limited(service, document) {
            let window = AUTH_RATE_WINDOW.as_secs();
            let mut answer = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Too many requests - more than {AUTH_RATE_LIMIT} in the last {window} seconds"
                ),
            );
            answer
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from(window));
            return answer;
        }
        if let Err(answer) = decryption_key(body["key"].as_str()) {
            return *answer;
        }
        let email = body["email_address"].as_str().unwrap_or_default();
        if email.is_empty() {
            return error(StatusCode::BAD_REQUEST, "No email address");
        }
        if !crate::email::is_valid_email_address(email) {
            return error(StatusCode::BAD_REQUEST, "Invalid email address");
        }
        let email = crate::email::strip_all_whitespace(email).to_lowercase();
        let doc = match self.find(service, document, body["key"].as_str()) {
            Ok(doc) => doc,
            // A wrong key is the store's error, as on /check.
            Err(answer) if answer.status == StatusCode::BAD_REQUEST => return *answer,
            // Unknown (the real API fails with a 500 here), blocked or
            // expired: not authenticated.
            Err(_) => return error(StatusCode::FORBIDDEN, "Authentication failure"),
        };
        let matches = doc
            .meta
            .confirm_email_address
            .as_deref()
            .is_some_and(|expected| expected.to_lowercase() == email);
        if !matches {
            return error(StatusCode::FORBIDDEN, "Authentication failure");
        }
        json_answer(
            StatusCode::OK,
            &serde_json::json!({
                "signed_data": self.sign(service, document),
                "direct_file_url": self.direct_file_url(service, document, doc),
            }),
        )
    }

    fn sign(&self, service: Uuid, document: Uuid) -> String {
        encode_url_safe(&hmac_sha256(
            &self.signing_key,
            &[service.as_bytes(), document.as_bytes()],
        ))
    }

    fn verify_signed(&self, signed: &str, service: Uuid, document: Uuid) -> bool {
        crate::ids::decode_url_safe(signed).is_some_and(|mac| {
            verify(
                &self.signing_key,
                &[service.as_bytes(), document.as_bytes()],
                &mac,
            )
        })
    }

    /// `GET /services/{s}/documents/{d}[.ext]?key=K`: the file itself. Needs the
    /// signed cookie when the document asks for email confirmation; without it,
    /// redirects to the frontend's landing page as the real API does.
    pub(crate) async fn file(
        &self,
        service: Uuid,
        document: Uuid,
        key: Option<&str>,
        headers: &HeaderMap,
    ) -> LocalFile {
        let doc = match self.find(service, document, key) {
            Err(answer) => return LocalFile::Answer(*answer),
            Ok(doc) => doc,
        };
        if doc.meta.confirm_email_address.is_some() {
            let signed = cookie(headers, ACCESS_COOKIE);
            if !signed.is_some_and(|s| self.verify_signed(s, service, document)) {
                return LocalFile::Redirect(frontend_path(service, document, &doc.meta.key));
            }
        }
        match tokio::fs::read(&doc.path).await {
            Ok(bytes) => {
                let mut headers = HeaderMap::new();
                if let Ok(value) = HeaderValue::from_str(&doc.meta.mimetype) {
                    headers.insert(header::CONTENT_TYPE, value);
                }
                let name = if doc.meta.filename.is_empty() {
                    format!("{document}.{}", doc.extension)
                } else {
                    doc.meta.filename.clone()
                };
                let attachment = FORCE_DOWNLOAD.contains(&doc.extension.as_str());
                if let Ok(value) = HeaderValue::from_str(&content_disposition(attachment, &name)) {
                    headers.insert(header::CONTENT_DISPOSITION, value);
                }
                not_for_robots(&mut headers);
                LocalFile::File {
                    body: Bytes::from(bytes),
                    headers,
                }
            }
            Err(error) => {
                tracing::error!(%error, path = %doc.path.display(), "Cannot read local document");
                LocalFile::Answer(json_answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": "Cannot read the document"}),
                ))
            }
        }
    }
}

/// What the file route answers.
pub(crate) enum LocalFile {
    /// A JSON error.
    Answer(Answer),
    /// 302 to this frontend path.
    Redirect(String),
    /// The file, with its `Content-Type`, `Content-Disposition` and robots
    /// headers.
    File { body: Bytes, headers: HeaderMap },
}

/// The key the local API signs access cookies with, kept in the directory so
/// that every worker process serving the same directory accepts the cookies
/// the others issued. The first process to start creates it.
fn shared_signing_key(dir: &Path) -> Result<[u8; 32], LocalApiError> {
    use std::io::Write as _;
    let path = dir.join(".signing-key");
    // Made before the file, so a failing generator leaves no empty key file
    // for the next process to wait on.
    let key = crate::random::bytes::<32>().map_err(LocalApiError::Random)?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(&key).map_err(io_error(&path))?;
            return Ok(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(&path)(e)),
    }
    // Another process may be writing it right now: give it a moment.
    for _ in 0..50 {
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(io_error(&path)(std::io::Error::other(
        "signing key file is not 32 bytes",
    )))
}

fn frontend_path(service: Uuid, document: Uuid, key: &str) -> String {
    format!(
        "/d/{}/{}?key={}",
        service.to_base64(),
        document.to_base64(),
        url_encode(key)
    )
}

fn json_answer(status: StatusCode, body: &serde_json::Value) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, json_content_type());
    Answer {
        status,
        body: Bytes::from(body.to_string()),
        headers,
    }
}

/// `{"error": message}` with `status`, as the real API's `jsonify(error=…)`.
fn error(status: StatusCode, message: &str) -> Answer {
    json_answer(status, &serde_json::json!({ "error": message }))
}

/// The key, present and base64, or the real API's 400.
fn decryption_key(key: Option<&str>) -> Result<&str, Box<Answer>> {
    match key {
        None | Some("") => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "Missing decryption key",
        ))),
        Some(key) if crate::ids::decode_url_safe(key).is_none() => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "Invalid decryption key",
        ))),
        Some(key) => Ok(key),
    }
}

/// The headers the real API puts on documents and their metadata.
fn not_for_robots(headers: &mut HeaderMap) {
    headers.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Werkzeug's `send_file` `Content-Disposition`: `inline` or `attachment`,
/// the name as a token when it is one, quoted otherwise; a name that is not
/// ASCII also goes as RFC 5987 `filename*`, with an ASCII `filename` beside
/// it (Werkzeug keeps the NFKD base letters, `é` → `e`; here the non-ASCII
/// characters are dropped).
fn content_disposition(attachment: bool, name: &str) -> String {
    let kind = if attachment { "attachment" } else { "inline" };
    if name.is_ascii() {
        return format!("{kind}; filename={}", header_value_quoted(name));
    }
    let simple: String = name.chars().filter(char::is_ascii).collect();
    let encoded = percent_encoding::utf8_percent_encode(name, RFC5987_ENCODE);
    format!(
        "{kind}; filename={}; filename*=UTF-8''{encoded}",
        header_value_quoted(&simple)
    )
}

/// What Python's `urllib.parse.quote(name, safe="!#$&+^`|~")` (Werkzeug's
/// `filename*`) encodes: everything but letters, digits and `_.-~!#$&+^`|`.
const RFC5987_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~')
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'^')
    .remove(b'`')
    .remove(b'|');

/// Werkzeug's `quote_header_value`: a token as is, anything else quoted.
fn header_value_quoted(value: &str) -> String {
    let token = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        value.to_owned()
    } else {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), LocalApiError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| LocalApiError::Metadata {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Writes through a temporary file and a rename, so another worker process
/// seeding or reading the same directory never sees a half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LocalApiError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// A JSON content type header value.
pub(crate) fn json_content_type() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> (tempfile::TempDir, LocalApi) {
        let dir = tempfile::tempdir().unwrap();
        let api =
            LocalApi::open(dir.path(), &Clock::fixed(Date::new(2022, 10, 12).unwrap())).unwrap();
        (dir, api)
    }

    #[test]
    fn seeds_two_samples_one_needing_confirmation() {
        let (_dir, api) = api();
        assert_eq!(api.samples().len(), 2);
        assert_eq!(api.samples()[0].confirm_email_address, None);
        assert_eq!(
            api.samples()[1].confirm_email_address.as_deref(),
            Some(SAMPLE_EMAIL_ADDRESS)
        );
        let service: Uuid = SAMPLE_SERVICE.parse().unwrap();
        let confirm: Uuid = SAMPLE_CONFIRM.parse().unwrap();
        let answer = api.check(service, confirm, Some(SAMPLE_CONFIRM_KEY));
        assert_eq!(answer.status, StatusCode::OK);
        let doc = &answer.json()["document"];
        assert_eq!(doc["confirm_email"], true);
        assert_eq!(doc["file_extension"], "txt");
        assert_eq!(doc["available_until"], "2022-10-26");
        assert_eq!(doc["size_in_bytes"], SAMPLE_CONFIRM_CONTENT.len());
    }

    #[test]
    fn check_errors_look_like_the_real_api() {
        let (_dir, api) = api();
        let service: Uuid = SAMPLE_SERVICE.parse().unwrap();
        let confirm: Uuid = SAMPLE_CONFIRM.parse().unwrap();
        let missing = api.check(service, confirm, None);
        assert_eq!(
            (missing.status, missing.json()["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("Missing decryption key"))
        );
        let invalid = api.check(service, confirm, Some("not base64!"));
        assert_eq!(invalid.json()["error"], "Invalid decryption key");
        let wrong = api.check(service, confirm, Some("AAAA"));
        assert_eq!(
            (wrong.status, wrong.json()["error"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("{'Code': '403', 'Message': 'Forbidden'}")
            )
        );
        // An unknown document is the real API's 404, not `{"document": null}`
        // (which no version of it sends any more).
        let unknown = api.check(service, Uuid::new_v4().unwrap(), Some("AAAA"));
        assert_eq!(
            (unknown.status, unknown.json()),
            (
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "The requested document could not be found"})
            )
        );
        assert!(unknown.headers.get(header::CACHE_CONTROL).is_none());
    }

    #[test]
    fn check_sends_the_filename_and_the_real_apis_headers() {
        let (_dir, api) = api();
        let service: Uuid = SAMPLE_SERVICE.parse().unwrap();
        let plain: Uuid = SAMPLE_PLAIN.parse().unwrap();
        let answer = api.check(service, plain, Some(SAMPLE_PLAIN_KEY));
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["document"]["filename"], "sample.csv");
        assert_eq!(answer.headers[header::CACHE_CONTROL], "max-age=1800");
        assert_eq!(answer.headers["x-robots-tag"], "noindex, nofollow");
        assert_eq!(answer.headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
        let status = LocalApi::status();
        assert_eq!(status.json(), serde_json::json!({"status": "ok"}));
        assert_eq!(
            status.headers[header::CACHE_CONTROL],
            "no-store, no-cache, private, must-revalidate"
        );
    }

    /// Writes a document's metadata and file into the API's directory.
    fn add_document(dir: &Path, meta: &DocumentFile) -> (Uuid, Uuid) {
        let service: Uuid = SAMPLE_SERVICE.parse().unwrap();
        let document = Uuid::new_v4().unwrap();
        let service_dir = dir.join("documents").join(SAMPLE_SERVICE);
        write_json(&service_dir.join(format!("{document}.json")), meta).unwrap();
        let extension = extension_for(&meta.mimetype, &meta.filename);
        std::fs::write(service_dir.join(format!("{document}.{extension}")), b"%PDF").unwrap();
        (service, document)
    }

    #[tokio::test]
    async fn blocked_and_expired_documents_are_403_and_410_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::fixed(Date::new(2022, 10, 12).unwrap());
        LocalApi::open(dir.path(), &clock).unwrap();
        let meta = |until: &str, blocked: bool| DocumentFile {
            key: "AAAA".to_owned(),
            filename: "report.pdf".to_owned(),
            mimetype: "application/pdf".to_owned(),
            confirm_email_address: Some(SAMPLE_EMAIL_ADDRESS.to_owned()),
            available_until: Some(until.to_owned()),
            blocked,
        };
        let (service, expired) = add_document(dir.path(), &meta("2022-10-11", false));
        let (_, blocked) = add_document(dir.path(), &meta("2022-10-20", true));
        let (_, last_day) = add_document(dir.path(), &meta("2022-10-12", false));
        let api = LocalApi::open(dir.path(), &clock).unwrap();
        let body = serde_json::json!({"key": "AAAA", "email_address": SAMPLE_EMAIL_ADDRESS});
        for (document, status, error) in [
            (
                expired,
                StatusCode::GONE,
                "The document is no longer available",
            ),
            (
                blocked,
                StatusCode::FORBIDDEN,
                "Access to the document has been blocked",
            ),
        ] {
            let check = api.check(service, document, Some("AAAA"));
            assert_eq!(
                (check.status, check.json()["error"].as_str()),
                (status, Some(error))
            );
            let LocalFile::Answer(file) = api
                .file(service, document, Some("AAAA"), &HeaderMap::new())
                .await
            else {
                panic!("{document}: served");
            };
            assert_eq!(file.status, status);
            let auth = api.authenticate(service, document, &body);
            assert_eq!(
                (auth.status, auth.json()["error"].as_str()),
                (StatusCode::FORBIDDEN, Some("Authentication failure"))
            );
        }
        // Available until the end of its last day.
        assert_eq!(
            api.check(service, last_day, Some("AAAA")).status,
            StatusCode::OK
        );
        assert_eq!(
            api.authenticate(service, last_day, &body).status,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn files_carry_werkzeugs_content_disposition() {
        let (_dir, api) = api();
        let service: Uuid = SAMPLE_SERVICE.parse().unwrap();
        let plain: Uuid = SAMPLE_PLAIN.parse().unwrap();
        let LocalFile::File { body, headers } = api
            .file(service, plain, Some(SAMPLE_PLAIN_KEY), &HeaderMap::new())
            .await
        else {
            panic!("not served");
        };
        assert_eq!(body, SAMPLE_PLAIN_CONTENT.as_bytes());
        assert_eq!(headers[header::CONTENT_TYPE], "text/csv");
        assert_eq!(
            headers[header::CONTENT_DISPOSITION],
            "attachment; filename=sample.csv"
        );
        assert_eq!(headers["x-robots-tag"], "noindex, nofollow");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        // What werkzeug.utils.send_file writes for these names.
        for (attachment, name, want) in [
            (false, "report.pdf", "inline; filename=report.pdf"),
            (
                true,
                "my report.txt",
                "attachment; filename=\"my report.txt\"",
            ),
            (false, "a\"b.pdf", "inline; filename=\"a\\\"b.pdf\""),
            (
                false,
                "résumé.pdf",
                "inline; filename=rsum.pdf; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
            ),
            (false, "", "inline; filename=\"\""),
        ] {
            assert_eq!(content_disposition(attachment, name), want, "{name}");
        }
    }

    #[test]
    fn authenticate_checks_its_fields_in_the_real_apis_order() {
        let (_dir, api) = api();
        let service: Uuid = SAMPLE_SERVICE.parse().unwrap();
        let confirm: Uuid = SAMPLE_CONFIRM.parse().unwrap();
        for (body, error) in [
            (
                serde_json::json!({"email_address": "x"}),
                "Missing decryption key",
            ),
            (
                serde_json::json!({"key": "!!", "email_address": "x"}),
                "Invalid decryption key",
            ),
            (
                serde_json::json!({"key": SAMPLE_CONFIRM_KEY}),
                "No email address",
            ),
            (
                serde_json::json!({"key": SAMPLE_CONFIRM_KEY, "email_address": ""}),
                "No email address",
            ),
            (
                serde_json::json!({"key": SAMPLE_CONFIRM_KEY, "email_address": "nope"}),
                "Invalid email address",
            ),
            // The key is checked against the document after the address.
            (
                serde_json::json!({"key": "AAAA", "email_address": SAMPLE_EMAIL_ADDRESS}),
                "{'Code': '403', 'Message': 'Forbidden'}",
            ),
        ] {
            let answer = api.authenticate(service, confirm, &body);
            assert_eq!(
                (answer.status, answer.json()["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some(error)),
                "{body}"
            );
        }
    }

    #[test]
    fn the_51st_attempt_is_429_with_retry_after() {
        let (_dir, api) = api();
        let service: Uuid = SAMPLE_SERVICE.parse().unwrap();
        let confirm: Uuid = SAMPLE_CONFIRM.parse().unwrap();
        let body =
            serde_json::json!({"key": SAMPLE_CONFIRM_KEY, "email_address": "other@example.gov.uk"});
        for _ in 0..AUTH_RATE_LIMIT {
            assert_eq!(
                api.authenticate(service, confirm, &body).status,
                StatusCode::FORBIDDEN
            );
        }
        let limited = api.authenticate(service, confirm, &body);
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers[header::RETRY_AFTER], "300");
        assert_eq!(
            limited.json()["error"],
            "Too many requests - more than 50 in the last 300 seconds"
        );
    }

    #[test]
    fn a_failing_generator_opens_no_api_and_writes_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::fixed(Date::new(2022, 10, 12).unwrap());
        let error =
            crate::random::tests::failing(|| LocalApi::open(dir.path(), &clock)).unwrap_err();
        assert!(matches!(error, LocalApiError::Random(_)), "{error}");
        assert!(
            error.to_string().contains("random generator failed"),
            "{error}"
        );
        assert!(!dir.path().join(".signing-key").exists());
        // A working generator later: the key is made then, and kept.
        let api = LocalApi::open(dir.path(), &clock).unwrap();
        let again = LocalApi::open(dir.path(), &clock).unwrap();
        assert_eq!(api.signing_key, again.signing_key);
    }

    #[test]
    fn authenticate_checks_the_address_case_insensitively() {
        let (_dir, api) = api();
        let service: Uuid = SAMPLE_SERVICE.parse().unwrap();
        let confirm: Uuid = SAMPLE_CONFIRM.parse().unwrap();
        let body =
            |email: &str| serde_json::json!({"key": SAMPLE_CONFIRM_KEY, "email_address": email});
        assert_eq!(
            api.authenticate(service, confirm, &body("other@example.gov.uk"))
                .status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            api.authenticate(service, confirm, &body("nope")).status,
            StatusCode::BAD_REQUEST
        );
        let ok = api.authenticate(service, confirm, &body(" TEST@example.gov.uk "));
        assert_eq!(ok.status, StatusCode::OK);
        let signed = ok.json()["signed_data"].as_str().unwrap().to_owned();
        assert!(api.verify_signed(&signed, service, confirm));
        assert!(!api.verify_signed(&signed, confirm, service));
    }
}
