//! The built-in local document API and service directory, for development:
//! the same routes and answers as the real document download API, backed by a
//! directory, so the whole flow runs offline.
//!
//! Layout of the directory:
//!
//! ```text
//! services.json                               {"<service uuid>": {"name": …, "contact_link": …}}
//! documents/<service uuid>/<document uuid>.json  {"key", "filename", "mimetype",
//!                                              "confirm_email_address", "available_until"}
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
        let mut api = Self::load(dir)?;
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
            };
            write_json(&service_dir.join(format!("{id}.json")), &meta)?;
            let file = service_dir.join(format!("{id}.{}", extension_for(mimetype, filename)));
            write_atomic(&file, content.as_bytes())?;
        }
        Ok(())
    }

    fn load(dir: &Path) -> Result<Self, LocalApiError> {
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

    fn lookup(
        &self,
        service: Uuid,
        document: Uuid,
        key: Option<&str>,
    ) -> Result<Option<&LocalDocument>, Answer> {
        let key = match key {
            None | Some("") => {
                return Err(json_answer(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "Missing decryption key"}),
                ))
            }
            Some(k) => k,
        };
        if crate::ids::decode_url_safe(key).is_none() {
            return Err(json_answer(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "Invalid decryption key"}),
            ));
        }
        match self.documents.get(&(service, document)) {
            None => Ok(None),
            Some(doc) if doc.meta.key == key => Ok(Some(doc)),
            Some(_) => Err(json_answer(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "Forbidden"}),
            )),
        }
    }

    /// `GET /services/{s}/documents/{d}/check?key=K`.
    pub(crate) fn check(&self, service: Uuid, document: Uuid, key: Option<&str>) -> Answer {
        match self.lookup(service, document, key) {
            Err(answer) => answer,
            Ok(None) => json_answer(StatusCode::OK, &serde_json::json!({ "document": null })),
            Ok(Some(doc)) => json_answer(
                StatusCode::OK,
                &serde_json::json!({ "document": {
                    "direct_file_url": self.direct_file_url(service, document, doc),
                    "confirm_email": doc.meta.confirm_email_address.is_some(),
                    "size_in_bytes": doc.size,
                    "file_extension": doc.extension,
                    "available_until": doc.meta.available_until,
                }}),
            ),
        }
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
            return json_answer(
                StatusCode::TOO_MANY_REQUESTS,
                &serde_json::json!({"error": format!("Too many requests - more than {AUTH_RATE_LIMIT} in the last {} seconds", AUTH_RATE_WINDOW.as_secs())}),
            );
        }
        let doc = match self.lookup(service, document, body["key"].as_str()) {
            Err(answer) => return answer,
            Ok(doc) => doc,
        };
        let email = body["email_address"].as_str().unwrap_or_default();
        if !crate::email::is_valid_email_address(email) {
            return json_answer(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "Invalid email address"}),
            );
        }
        let email = crate::email::strip_all_whitespace(email).to_lowercase();
        let Some(doc) = doc.filter(|d| {
            d.meta
                .confirm_email_address
                .as_deref()
                .is_some_and(|expected| expected.to_lowercase() == email)
        }) else {
            return json_answer(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "Authentication failure"}),
            );
        };
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
        let doc = match self.lookup(service, document, key) {
            Err(answer) => return LocalFile::Answer(answer),
            Ok(None) => {
                return LocalFile::Answer(json_answer(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "The requested document does not exist"}),
                ))
            }
            Ok(Some(doc)) => doc,
        };
        if doc.meta.confirm_email_address.is_some() {
            let signed = cookie(headers, ACCESS_COOKIE);
            if !signed.is_some_and(|s| self.verify_signed(s, service, document)) {
                return LocalFile::Redirect(frontend_path(service, document, &doc.meta.key));
            }
        }
        match tokio::fs::read(&doc.path).await {
            Ok(bytes) => LocalFile::File {
                body: Bytes::from(bytes),
                mimetype: doc.meta.mimetype.clone(),
                attachment: matches!(doc.extension.as_str(), "csv" | "rtf")
                    .then(|| format!("{document}.{}", doc.extension)),
            },
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
    /// The file.
    File {
        body: Bytes,
        mimetype: String,
        /// `Content-Disposition: attachment` with this filename.
        attachment: Option<String>,
    },
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
    Answer {
        status,
        body: Bytes::from(body.to_string()),
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
        let wrong = api.check(service, confirm, Some("AAAA"));
        assert_eq!(wrong.json()["error"], "Forbidden");
        let unknown = api.check(service, Uuid::new_v4().unwrap(), Some("AAAA"));
        assert_eq!(unknown.json(), serde_json::json!({"document": null}));
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
