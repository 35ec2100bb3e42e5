//! A real browser on the Document Download frontend: headless Chromium follows
//! the confirm-email journey on the offline default, downloads the file, and
//! the pages work with their Content-Security-Policy enforced; and, through
//! `edge`, meets the unavailable page, the expired page and the download link.
//!
//! Chromium is driven over the `DevTools` protocol on `--remote-debugging-pipe`:
//! JSON messages separated by NUL bytes, read from the browser's fd 4 and
//! written to its fd 3. `std::process` cannot hand a child extra descriptors
//! without `unsafe`, so two named pipes (`mkfifo`) are opened here and `sh`
//! redirects them onto fds 3 and 4 before `exec`ing Chromium. No WebSocket, no
//! TCP port to race for, no helper runtime, nothing downloaded at test time.
//!
//! Needs Debian's `chromium` (`/usr/bin/chromium`): without it the tests say
//! `SKIPPED:` on stderr, and fail on CI (`CI=true`), where it is installed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{free_port, require_tool, start, Process};

const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");
const CHROMIUM: &str = "/usr/bin/chromium";

const DOC: &str = "/d/jTpOLGsfTF6afS8OGzxNXg/fiudTFofSz6cjW8KK0xtjg";
const KEY: &str = "key=c2FtcGxlLWtleS1mb3ItdGhlLWNvbmZpcm0tZG9jdW1lbnQ";
const ADDRESS: &str = "test@example.gov.uk";
const CONTENT: &str = "This is the sample file that needs email confirmation.\n\
                       It was served by wharf's local document API.\n";

/// One browser at a time: Chromium is heavy for this machine's two cores, and
/// the other end-to-end tests run alongside.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// Marks the console messages written by the injected violation listener.
const CSP_MARK: &str = "wharf-csp-violation";

/// Installed in every document before its own scripts run: reports each CSP
/// violation on the console, where `Runtime.consoleAPICalled` sees it.
const CSP_LISTENER: &str = r#"document.addEventListener("securitypolicyviolation", (e) => {
  console.error("wharf-csp-violation", JSON.stringify({
    directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample,
    disposition: e.disposition, page: e.documentURI }));
}, true);"#;

/// Chromium with a `DevTools` pipe. Dropping it kills the browser's process
/// group (browser, zygote, renderers) and removes its profile.
struct Browser {
    child: Child,
    /// The write end of the browser's fd 3 (opened read-write, so the open
    /// never blocks and writes never fail while the browser starts).
    commands: File,
    /// Keeps the browser's fd 4 pipe open for writing until the browser is
    /// gone; dropping it after the kill lets the reader thread see EOF.
    out_keepalive: Option<File>,
    messages: Receiver<Value>,
    next_id: u64,
    /// Every event received, in order (protocol messages without an `id`).
    events: Vec<Value>,
    responses: HashMap<u64, Value>,
    deadline: Instant,
    stderr_path: PathBuf,
    /// Profile, pipes, downloads; removed after the browser is killed.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium; every later wait ends at `deadline`.
    fn launch(deadline: Instant) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fifo_in = dir.path().join("cdp-in");
        let fifo_out = dir.path().join("cdp-out");
        let status = Command::new("mkfifo")
            .arg(&fifo_in)
            .arg(&fifo_out)
            .status()
            .unwrap();
        assert!(status.success(), "mkfifo failed");
        // Opening a FIFO read-write never blocks on Linux; with both ends held
        // here, the shell's opens below do not block either.
        let rw = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap()
        };
        let commands = rw(&fifo_in);
        let out_keepalive = rw(&fifo_out);
        // Read-only, so EOF arrives once the browser and `out_keepalive` are gone.
        let from_browser = File::open(&fifo_out).unwrap();

        let profile = dir.path().join("profile");
        let stderr_path = dir.path().join("chromium.stderr");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"exec "$@" 3<"$WHARF_CDP_IN" 4>"$WHARF_CDP_OUT""#)
            .arg("sh")
            .arg(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-pipe",
                "--window-size=1024,768",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .env("WHARF_CDP_IN", &fifo_in)
            .env("WHARF_CDP_OUT", &fifo_out)
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("chromium.stdout")).unwrap())
            .stderr(File::create(&stderr_path).unwrap());
        // Its own process group, so the drop kills the helpers too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().unwrap();

        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from_browser);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if message.last() == Some(&0) {
                    message.pop();
                }
                let Ok(value) = serde_json::from_slice::<Value>(&message) else {
                    continue;
                };
                if sender.send(value).is_err() {
                    return;
                }
            }
        });

        Browser {
            child,
            commands,
            out_keepalive: Some(out_keepalive),
            messages,
            next_id: 0,
            events: Vec::new(),
            responses: HashMap::new(),
            deadline,
            stderr_path,
            dir,
        }
    }

    fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Receives one message (up to 100 ms); panics past the deadline or if
    /// the browser has exited.
    fn pump(&mut self, waiting_for: &str) {
        assert!(
            Instant::now() < self.deadline,
            "timed out waiting for {waiting_for}\nchromium stderr:\n{}",
            self.stderr()
        );
        match self.messages.recv_timeout(Duration::from_millis(100)) {
            Ok(message) => match message["id"].as_u64() {
                Some(id) => {
                    self.responses.insert(id, message);
                }
                None => self.events.push(message),
            },
            Err(RecvTimeoutError::Timeout) => {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!(
                        "chromium exited ({status}) while waiting for {waiting_for}\n{}",
                        self.stderr()
                    );
                }
            }
            Err(RecvTimeoutError::Disconnected) => panic!(
                "DevTools pipe closed while waiting for {waiting_for}\n{}",
                self.stderr()
            ),
        }
    }

    /// Sends a command (to a page when `session` is given) and returns its
    /// `result`; a protocol error panics.
    fn call(&mut self, session: Option<&str>, method: &str, params: &Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        loop {
            if let Some(response) = self.responses.remove(&id) {
                assert!(
                    response.get("error").is_none(),
                    "{method} failed: {response}"
                );
                return response["result"].clone();
            }
            self.pump(method);
        }
    }

    /// The first event at index `since` or later that `matches`; returns its
    /// index.
    fn wait_event(&mut self, since: usize, what: &str, matches: impl Fn(&Value) -> bool) -> usize {
        let mut checked = since;
        loop {
            if let Some(offset) = self.events[checked..].iter().position(&matches) {
                return checked + offset;
            }
            checked = self.events.len();
            self.pump(what);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SIGKILL to the whole group (the browser is its leader): the
        // browser, its zygote and renderers were all started by this test.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.out_keepalive.take());
    }
}

/// A page (tab) of the browser, attached with a flat session.
struct Page<'a> {
    browser: &'a mut Browser,
    session: String,
}

impl Page<'_> {
    fn call(&mut self, method: &str, params: &Value) -> Value {
        let session = self.session.clone();
        self.browser.call(Some(&session), method, params)
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its
    /// value; a thrown exception panics.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            &json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits for the page's `load` event after event index `since`.
    fn wait_load(&mut self, since: usize, what: &str) {
        let session = self.session.clone();
        self.browser.wait_event(since, what, |e| {
            e["method"] == "Page.loadEventFired" && e["sessionId"] == session.as_str()
        });
    }

    /// A real mouse click (press and release) in the middle of the element
    /// `selector`, scrolled into view first.
    fn click(&mut self, selector: &str) {
        self.click_with(selector, 0);
    }

    /// [`Page::click`] holding `modifiers` (`DevTools` bits: Alt 1, Ctrl 2,
    /// Meta 4, Shift 8).
    fn click_with(&mut self, selector: &str, modifiers: u8) {
        let selector_json = serde_json::to_string(selector).unwrap();
        let centre = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector_json}); \
             if (!e) return null; e.scrollIntoView({{block: 'center'}}); \
             const r = e.getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
        ));
        assert!(
            centre.is_array(),
            "no element {selector} on {}",
            self.text()
        );
        let (x, y) = (centre[0].as_f64().unwrap(), centre[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                &json!({ "type": kind, "x": x, "y": y, "button": "left",
                         "clickCount": 1, "modifiers": modifiers }),
            );
        }
    }

    /// The bytes of the download that began after event index `since`, from
    /// `href`, once complete (saved under its GUID in `downloads`).
    fn downloaded(&mut self, since: usize, href: &str, downloads: &Path) -> Vec<u8> {
        let index = self.browser.wait_event(since, "the download", |e| {
            e["method"] == "Browser.downloadProgress" && e["params"]["state"] != "inProgress"
        });
        let done = self.browser.events[index].clone();
        assert_eq!(done["params"]["state"], "completed", "{done}");
        let began = self.browser.events[since..]
            .iter()
            .find(|e| {
                e["method"] == "Browser.downloadWillBegin"
                    && e["params"]["guid"] == done["params"]["guid"]
            })
            .unwrap_or_else(|| panic!("no downloadWillBegin for {done}"))
            .clone();
        assert_eq!(began["params"]["url"], href, "{began}");
        let name = began["params"]["suggestedFilename"].as_str().unwrap_or("?");
        println!("file link: downloaded {name}");
        std::fs::read(downloads.join(done["params"]["guid"].as_str().unwrap())).unwrap()
    }

    fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Navigates to `url` and waits for it: the document's HTTP status, its
    /// `h1` and its text.
    fn visit(&mut self, url: &str) -> (u64, String, String) {
        let mark = self.browser.events.len();
        self.call("Page.navigate", &json!({ "url": url }));
        self.wait_load(mark, url);
        let status = self.eval("performance.getEntriesByType('navigation')[0].responseStatus");
        let heading =
            self.eval("document.querySelector('h1') ? document.querySelector('h1').innerText : ''");
        (
            status.as_u64().unwrap_or_default(),
            heading.as_str().unwrap_or_default().to_owned(),
            self.text(),
        )
    }

    fn location(&mut self) -> String {
        self.eval("location.href").as_str().unwrap().to_owned()
    }

    /// Checks the page in place: its heading, and that its nonce'd inline
    /// script ran under the enforced policy.
    fn check_page(&mut self, path: &str, heading: &str) -> Assets {
        let location = self.location();
        assert!(
            location.contains(&format!("{path}?{KEY}")),
            "expected {path}, at {location}: {}",
            self.text()
        );
        let h1 =
            self.eval("document.querySelector('h1') && document.querySelector('h1').innerText");
        assert_eq!(h1, heading, "at {location}: {}", self.text());
        let class = self.eval("document.body.className");
        assert!(
            class
                .as_str()
                .is_some_and(|c| c.contains("govuk-frontend-supported")),
            "the page's nonce'd inline script did not run at {location}: class {class}"
        );
        // GOV.UK Frontend, when the page links it: the stylesheet applied and
        // the module script initialised the components.
        let styled = self.eval("document.querySelector('link[rel=stylesheet]') !== null");
        if styled == true {
            let rules = self.eval(
                "Array.from(document.styleSheets).filter((s) => s.href)\
                 .reduce((n, s) => n + s.cssRules.length, 0)",
            );
            assert!(
                rules.as_u64().is_some_and(|n| n > 0),
                "stylesheet not applied at {location}"
            );
        }
        let scripted = self.eval("document.querySelector('script[type=module]') !== null");
        if scripted == true {
            let init = self.eval(
                "document.querySelector('[data-module=govuk-skip-link]')\
                 .hasAttribute('data-govuk-skip-link-init')",
            );
            assert_eq!(
                init, true,
                "GOV.UK Frontend's initAll did not run at {location}"
            );
        }
        match (styled == true, scripted == true) {
            (true, true) => Assets::Linked,
            (false, false) => Assets::Absent,
            other => panic!("stylesheet and script disagree at {location}: {other:?}"),
        }
    }
}

/// Whether the pages linked GOV.UK Frontend's stylesheet and script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assets {
    Linked,
    Absent,
}

/// The confirm sample's URL and address from the frontend's start-up log.
fn sample_from_logs(frontend: &Process, deadline: Instant) -> (String, String) {
    loop {
        let seen = frontend.stdout();
        for line in seen.lines() {
            let Ok(doc) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if doc["message"] == "Sample document" && doc["confirm_email_address"] != "-" {
                return (
                    doc["url"].as_str().unwrap().to_owned(),
                    doc["confirm_email_address"].as_str().unwrap().to_owned(),
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "no confirm sample logged:\n{seen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything the browser reported that concerns the CSP or is an error:
/// console errors and warnings (the injected listener's reports among them),
/// log entries, uncaught exceptions and `DevTools` issues.
fn problems(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| match e["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                matches!(
                    e["params"]["type"].as_str(),
                    Some("error" | "warning" | "assert")
                ) || e.to_string().contains(CSP_MARK)
            }
            Some("Log.entryAdded") => {
                let entry = &e["params"]["entry"];
                // Without GOV.UK Frontend's icons the page links none, so the
                // browser tries /favicon.ico; its 404 is not the page's fault.
                let favicon = entry["source"] == "network"
                    && entry["url"]
                        .as_str()
                        .is_some_and(|url| url.ends_with("/favicon.ico"));
                (entry["level"] == "error" && !favicon)
                    || entry["level"] == "warning"
                    || entry["source"] == "security"
                    || entry.to_string().contains("Content Security Policy")
            }
            Some("Runtime.exceptionThrown" | "Audits.issueAdded") => true,
            _ => false,
        })
        .map(Value::to_string)
        .collect()
}

/// The default assets: GOV.UK Frontend when `scripts/govuk-frontend-assets.sh`
/// has installed it, otherwise the same as the test below.
#[test]
fn chromium_confirms_the_email_address_and_downloads_the_file_under_the_csp() {
    if let Some(assets) = journey(None) {
        println!("GOV.UK Frontend assets: {assets:?}");
    }
}

/// No GOV.UK Frontend assets: unstyled pages work the same.
#[test]
fn chromium_journey_works_unstyled_without_govuk_frontend_assets() {
    let empty = tempfile::tempdir().unwrap();
    if let Some(assets) = journey(Some(empty.path())) {
        assert_eq!(assets, Assets::Absent);
    }
}

/// The sample service, as the frontend's paths and the local API's
/// directory name it.
const SERVICE_B64: &str = "jTpOLGsfTF6afS8OGzxNXg";
const SERVICE_UUID: &str = "8d3a4e2c-6b1f-4c5e-9a7d-2f0e1b3c4d5e";
/// The sample that needs no confirmation (the local API's `sample.csv`).
const PLAIN_DOC: &str = "HJ9eejstTm-KG5wNLk9qiw";
const PLAIN_KEY: &str = "key=c2FtcGxlLWtleS1mb3ItdGhlLXBsYWluLWRvY3VtZW50";
const PLAIN_CONTENT: &str = "name,department\nSample Person,Cabinet Office\n";
/// A document written into the local API's directory, long expired.
const EXPIRED_UUID: &str = "4b1d0c6e-2a3f-4e5d-8c7b-1a2b3c4d5e6f";
const EXPIRED_DOC: &str = "Sx0Mbio_Tl2MexorPE1ebw";
const EXPIRED_KEY: &str = "a2V5LW9mLXRoZS1leHBpcmVkLWRvY3VtZW50";
/// A document id the local API does not have.
const UNKNOWN_DOC: &str = "AAAAAAAAQACAAAAAAAAAAA";

/// Issue #21's walk: Chromium through `edge` to `frontend` on the local
/// document API, as a recipient meets it: a link to a document the API does
/// not have (DDF's 404 page naming the service and how to contact it), a
/// link to an expired one (the 410 page), and a live one to its download
/// link, whose file comes back through edge too. No CSP report on the way.
#[test]
fn chromium_through_edge_sees_the_unavailable_and_expired_pages_and_the_file() {
    if require_tool(CHROMIUM, "apt-get install -y chromium").is_none() {
        return;
    }
    let _one_browser = ONE_BROWSER.lock().unwrap_or_else(PoisonError::into_inner);
    let deadline = Instant::now() + Duration::from_secs(50);
    let local_dir = tempfile::tempdir().unwrap();
    write_expired_document(local_dir.path());
    let (frontend, _, _) = start_frontend(local_dir.path(), None, deadline);
    let edge = crate::reliability::Edge::start(&crate::reliability::EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", frontend.addr()),
        ..crate::reliability::EdgeSpec::default()
    });
    let base = format!("http://{}", edge.addr());

    let mut browser = Browser::launch(deadline);
    let mut page = Page::open(&mut browser);
    let unknown = format!("{base}/d/{SERVICE_B64}/{UNKNOWN_DOC}?{PLAIN_KEY}");
    let (status, heading, text) = page.visit(&unknown);
    assert_eq!(
        (status, heading.as_str()),
        (404, "Page not found"),
        "{text}"
    );
    assert!(
        text.contains(
            "If you selected a link in an email, the file may have expired or been deleted."
        ) && text.contains("If you have any questions, contact Sample Service."),
        "{text}"
    );
    let expired = format!("{base}/d/{SERVICE_B64}/{EXPIRED_DOC}?key={EXPIRED_KEY}");
    let (status, heading, text) = page.visit(&expired);
    assert_eq!(
        (status, heading.as_str()),
        (410, "No longer available"),
        "{text}"
    );
    assert!(
        text.contains("The file Sample Service sent you has expired or been deleted."),
        "{text}"
    );

    let (status, heading, _) =
        page.visit(&format!("{base}/d/{SERVICE_B64}/{PLAIN_DOC}?{PLAIN_KEY}"));
    assert_eq!(
        (status, heading.as_str()),
        (200, "You have a file to download")
    );
    let mark = page.browser.events.len();
    page.click("a.govuk-button--start");
    page.wait_load(mark, "the download page");
    assert!(page
        .location()
        .starts_with(&format!("{base}/d/{SERVICE_B64}/{PLAIN_DOC}/download?")));
    let link = page.eval(
        "(async () => { const a = document.querySelector('a[href*=\"/services/\"]'); \
         const r = await fetch(a.href); \
         return [a.href, a.hasAttribute('download'), a.innerText, r.status, await r.text()]; })()",
    );
    assert!(
        link[0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{base}/services/{SERVICE_UUID}/documents/")),
        "{link}"
    );
    assert_eq!(
        link[1], true,
        "the link has DDF's download attribute: {link}"
    );
    assert_eq!(
        link[2], "Download this CSV file (0.1KB) to your device",
        "{link}"
    );
    assert_eq!(
        (link[3].as_u64(), link[4].as_str()),
        (Some(200), Some(PLAIN_CONTENT)),
        "{link}"
    );
    // The browser logs the 404 and 410 it was sent to, as it must; nothing
    // else may be reported.
    let mut found = problems(&page.browser.events);
    found.retain(|p| {
        let expected = [(&unknown, "404 (Not Found)"), (&expired, "410 (Gone)")];
        !expected
            .iter()
            .any(|(url, status)| p.contains(&format!("\"url\":\"{url}\"")) && p.contains(status))
    });
    assert!(found.is_empty(), "the walk reported:\n{}", found.join("\n"));
    drop(browser);
    drop(edge);
    drop(frontend);
}

/// Puts a document that expired in 2020 into the local API's directory
/// (the API seeds its samples beside it at start and loads both).
fn write_expired_document(dir: &Path) {
    let service = dir.join("documents").join(SERVICE_UUID);
    std::fs::create_dir_all(&service).unwrap();
    let meta = json!({
        "key": EXPIRED_KEY,
        "filename": "old.pdf",
        "mimetype": "application/pdf",
        "confirm_email_address": null,
        "available_until": "2020-01-01",
    });
    std::fs::write(
        service.join(format!("{EXPIRED_UUID}.json")),
        meta.to_string(),
    )
    .unwrap();
    std::fs::write(service.join(format!("{EXPIRED_UUID}.pdf")), b"%PDF-1.4\n").unwrap();
}

/// The whole journey in a fresh browser against a fresh `frontend`; `None`
/// when Chromium is not installed.
fn journey(assets_dir: Option<&Path>) -> Option<Assets> {
    require_tool(CHROMIUM, "apt-get install -y chromium")?;
    let _one_browser = ONE_BROWSER.lock().unwrap_or_else(PoisonError::into_inner);
    let deadline = Instant::now() + Duration::from_secs(50);
    let local_dir = tempfile::tempdir().unwrap();
    let (frontend, landing_url, address) = start_frontend(local_dir.path(), assets_dir, deadline);

    let mut browser = Browser::launch(deadline);
    let downloads = browser.dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    browser.call(
        None,
        "Browser.setDownloadBehavior",
        &json!({ "behavior": "allowAndName", "downloadPath": downloads, "eventsEnabled": true }),
    );
    let mut page = Page::open(&mut browser);
    let assets = page.confirm_and_fetch(&landing_url, &address);
    let found = problems(&page.browser.events);
    assert!(
        found.is_empty(),
        "the journey reported:\n{}",
        found.join("\n")
    );
    page.follow_file_link(&downloads);
    let found = problems(&page.browser.events);
    assert!(
        found.is_empty(),
        "following the file reported:\n{}",
        found.join("\n")
    );
    page.canary(&landing_url);

    drop(browser);
    drop(frontend);
    Some(assets)
}

/// Starts `frontend` on the offline default; returns it with the confirm
/// sample's URL and address as its start-up log gives them.
fn start_frontend(
    local_dir: &Path,
    assets_dir: Option<&Path>,
    deadline: Instant,
) -> (Process, String, String) {
    let port = free_port();
    let mut vars = HashMap::from([
        ("PORT", port.to_string()),
        ("WHARF_LOG_FORMAT", "json".to_owned()),
        ("WHARF_DOWNLOAD_LOCAL_DIR", local_dir.display().to_string()),
    ]);
    if let Some(dir) = assets_dir {
        vars.insert("WHARF_DOWNLOAD_ASSETS_DIR", dir.display().to_string());
    }
    let frontend = start(FRONTEND, &["serve"], &vars, port);
    // The sample's URL comes from its log (which start reads continuously).
    let (landing_url, address) = sample_from_logs(&frontend, deadline);
    assert_eq!(landing_url, frontend.url(&format!("{DOC}?{KEY}")));
    assert_eq!(address, ADDRESS);
    (frontend, landing_url, address)
}

impl<'a> Page<'a> {
    /// A new tab with the page domains enabled and the CSP listener installed.
    fn open(browser: &'a mut Browser) -> Self {
        let target = browser.call(
            None,
            "Target.createTarget",
            &json!({ "url": "about:blank" }),
        );
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            &json!({ "targetId": target["targetId"], "flatten": true }),
        );
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let mut page = Page { browser, session };
        for domain in ["Page", "Runtime", "Log", "Audits"] {
            page.call(&format!("{domain}.enable"), &json!({}));
        }
        page.call(
            "Page.addScriptToEvaluateOnNewDocument",
            &json!({ "source": CSP_LISTENER }),
        );
        page
    }
}

impl Page<'_> {
    /// Landing page, Continue, the address typed and submitted, the download
    /// page, and the file's bytes as the page's own `fetch` gets them with the
    /// access cookie.
    fn confirm_and_fetch(&mut self, landing_url: &str, address: &str) -> Assets {
        let mark = self.browser.events.len();
        self.call("Page.navigate", &json!({ "url": landing_url }));
        self.wait_load(mark, "the landing page");
        let assets = self.check_page(DOC, "You have a file to download");

        let mark = self.browser.events.len();
        self.click("a.govuk-button--start");
        self.wait_load(mark, "the confirm page");
        let confirm = self.check_page(
            &format!("{DOC}/confirm-email-address"),
            "Confirm your email address",
        );
        assert_eq!(confirm, assets);

        self.click("#email_address");
        self.call("Input.insertText", &json!({ "text": address }));
        assert_eq!(
            self.eval("document.activeElement.id + '=' + document.activeElement.value"),
            format!("email_address={address}")
        );
        let mark = self.browser.events.len();
        self.click("form button[type=submit]");
        self.wait_load(mark, "the download page");
        let download = self.check_page(&format!("{DOC}/download"), "Download your file");
        assert_eq!(download, assets);

        let bytes = self.eval(
            "(async () => { const a = document.querySelector('a[href*=\"/services/\"]'); \
             const r = await fetch(a.href); \
             return [r.status, Array.from(new Uint8Array(await r.arrayBuffer()))]; })()",
        );
        assert_eq!(bytes[0], 200, "{bytes}");
        let bytes: Vec<u8> = bytes[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
            .collect();
        assert_eq!(String::from_utf8_lossy(&bytes), CONTENT);
        assets
    }

    /// Follows the file link on the download page twice. Alt+click ("download
    /// the linked file") saves it into `downloads`. A plain click either
    /// downloads it too (`Content-Disposition: attachment`) or shows it in the
    /// tab (`text/plain` inline). Each time its bytes must be the file's.
    fn follow_file_link(&mut self, downloads: &Path) {
        const LINK: &str = "a[href*=\"/services/\"]";
        let file_href = self.eval(&format!("document.querySelector('{LINK}').href"));
        let file_href = file_href.as_str().unwrap().to_owned();

        let mark = self.browser.events.len();
        self.click_with(LINK, 1);
        let saved = self.downloaded(mark, &file_href, downloads);
        assert_eq!(String::from_utf8_lossy(&saved), CONTENT);

        let mark = self.browser.events.len();
        self.click(LINK);
        let session = self.session.clone();
        let index = self.browser.wait_event(mark, "the file", |e| {
            e["method"] == "Browser.downloadWillBegin"
                || (e["method"] == "Page.loadEventFired" && e["sessionId"] == session.as_str())
        });
        let followed = if self.browser.events[index]["method"] == "Browser.downloadWillBegin" {
            self.downloaded(mark, &file_href, downloads)
        } else {
            println!("file link: shown in the tab");
            assert_eq!(self.location(), file_href);
            assert_eq!(self.eval("document.contentType"), "text/plain");
            // A text/plain document is one <pre> holding the response verbatim.
            let text = self.eval("document.querySelector('pre').textContent");
            text.as_str().unwrap().as_bytes().to_vec()
        };
        assert_eq!(String::from_utf8_lossy(&followed), CONTENT);
    }

    /// Shows that the CSP checks can fail: back on a page of the service, an
    /// inline script without the nonce is blocked (not just reported), and
    /// the injected listener, the browser's log and `DevTools` issues each
    /// report it.
    fn canary(&mut self, landing_url: &str) {
        let mark = self.browser.events.len();
        self.call("Page.navigate", &json!({ "url": landing_url }));
        self.wait_load(mark, "the landing page again");
        self.check_page(DOC, "You have a file to download");
        let mark = self.browser.events.len();
        // A last look, now that late reports of the journey have had time.
        let found = problems(&self.browser.events);
        assert!(
            found.is_empty(),
            "the journey reported:\n{}",
            found.join("\n")
        );
        self.eval(
            "(() => { const s = document.createElement('script'); \
             s.textContent = 'window.wharfCanaryRan = true;'; \
             document.head.appendChild(s); })()",
        );
        self.browser
            .wait_event(mark, "the canary's violation report", |e| {
                e["method"] == "Runtime.consoleAPICalled" && e.to_string().contains(CSP_MARK)
            });
        self.browser
            .wait_event(mark, "the canary's log entry", |e| {
                e["method"] == "Log.entryAdded"
                    && e["params"]["entry"]
                        .to_string()
                        .contains("Content Security Policy")
            });
        self.browser
            .wait_event(mark, "the canary's DevTools issue", |e| {
                e["method"] == "Audits.issueAdded"
                    && e["params"]["issue"]["code"] == "ContentSecurityPolicyIssue"
            });
        assert_eq!(self.eval("window.wharfCanaryRan === true"), false);
        let canary = problems(&self.browser.events[mark..]);
        assert!(
            canary.iter().any(|p| p.contains("script-src")),
            "{canary:?}"
        );
    }
}
