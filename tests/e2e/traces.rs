//! One trace across `edge` → `frontend` → the document API: both binaries
//! export spans over OTLP/HTTP (edge in protobuf, frontend in JSON) to an
//! in-test receiver; one request arrives with a known `traceparent`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message as _;

use crate::reliability::dependency::{document_json, SERVICE_JSON};
use crate::reliability::stub::{Reply, Seen, Stub};
use crate::reliability::{api_env, document_path, eventually, frontend, Edge, EdgeSpec};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const KEY: &str = "TraceKeyOfTheDocument0x5ecret";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// 2 server, 3 client (OTLP `SpanKind`).
    kind: i32,
    attributes: Vec<(String, String)>,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text(value: Option<&any_value::Value>) -> String {
    match value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn flat(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Every export's content type and raw body.
type Bodies = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP receiver: `POST /v1/traces`, protobuf or JSON,
/// HTTP/1.1 keep-alive. Keeps every raw body and every decoded span.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
    bodies: Bodies,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (s, b) = (Arc::clone(&spans), Arc::clone(&bodies));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (s, b) = (Arc::clone(&s), Arc::clone(&b));
                std::thread::spawn(move || serve(stream, &s, &b));
            }
        });
        Self {
            addr,
            spans,
            bodies,
        }
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, spans: &Mutex<Vec<Exported>>, bodies: &Mutex<Vec<(String, Vec<u8>)>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut content_type) = (0_usize, String::new());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "content-type" => value.trim().clone_into(&mut content_type),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "{request_line}"
        );
        let request = if content_type.contains("json") {
            serde_json::from_slice::<ExportTraceServiceRequest>(&body).unwrap()
        } else {
            ExportTraceServiceRequest::decode(body.as_slice()).unwrap()
        };
        let mut found = Vec::new();
        for resource in &request.resource_spans {
            let attributes = resource
                .resource
                .as_ref()
                .map(|r| flat(&r.attributes))
                .unwrap_or_default();
            let service = attributes
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    found.push(Exported {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        name: span.name.clone(),
                        kind: span.kind,
                        attributes: flat(&span.attributes),
                    });
                }
            }
        }
        spans.lock().unwrap().extend(found);
        bodies.lock().unwrap().push((content_type.clone(), body));
        writer
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
    }
}

fn tracing_env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("WHARF_TRACING", "otlp".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", receiver.addr),
        ),
        // Export within 100 ms rather than the SDK's 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

/// curl's status code for a GET of `url` with `headers`.
fn get(url: &str, headers: &[&str]) -> String {
    let mut command = std::process::Command::new("curl");
    command.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ]);
    for header in headers {
        command.args(["-H", header]);
    }
    let out = command.arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_request_is_one_trace_across_edge_frontend_and_the_api() {
    let receiver = Receiver::start();
    let api = Stub::start(|seen| {
        let path = seen.path();
        if path.starts_with("/service/") {
            Reply::json(200, SERVICE_JSON)
        } else if path.ends_with("/check") {
            Reply::json(200, &document_json(false))
        } else {
            Reply::json(404, "{}")
        }
    });
    let mut env = api_env(&api);
    env.extend(tracing_env(&receiver));
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()));
    let frontend = frontend(&env);
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", frontend.addr()),
        env: tracing_env(&receiver),
        ..EdgeSpec::default()
    });
    let code = get(
        &format!("http://{}{}", edge.addr(), document_path(KEY)),
        &[
            &format!("traceparent: 00-{TRACE}-{PARENT}-01"),
            "X-Request-Id: trace-test-request-1",
        ],
    );
    assert_eq!(code, "200");

    // edge: server + client; frontend: server + two API calls (service, check).
    let complete = |spans: &[Exported]| {
        spans.iter().filter(|s| s.service == "edge").count() >= 2
            && spans.iter().filter(|s| s.service == "frontend").count() >= 3
    };
    assert!(
        eventually(Duration::from_secs(15), || complete(&receiver.spans())),
        "spans: {:#?}\nedge: {}\nfrontend: {}",
        receiver.spans(),
        edge.proc.logs(),
        frontend.logs()
    );
    assert_links(&receiver.spans(), &api.seen());
    no_key_exported(&receiver);
    // Both access-log lines carry the trace id and the request id.
    let edge_logs = edge.proc.stop();
    let frontend_logs = frontend.stop();
    for (name, logs) in [("edge", &edge_logs), ("frontend", &frontend_logs)] {
        let line = logs
            .lines()
            .find(|l| l.contains("Served request") && l.contains("/d/"))
            .unwrap_or_else(|| panic!("no {name} access log line: {logs}"));
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(entry["trace_id"], TRACE, "{name}: {line}");
        assert_eq!(
            entry["request_id"], "trace-test-request-1",
            "{name}: {line}"
        );
    }
}

/// One trace, linked edge server → edge client → frontend server → frontend
/// clients → the API.
fn assert_links(spans: &[Exported], seen: &[Seen]) {
    let dump = format!("{spans:#?}");
    for span in spans {
        assert_eq!(span.trace_id, TRACE, "one trace: {dump}");
    }
    let one = |service: &str, kind: i32| {
        let found: Vec<&Exported> = spans
            .iter()
            .filter(|s| s.service == service && s.kind == kind)
            .collect();
        assert!(
            !found.is_empty(),
            "no {service} span of kind {kind}: {dump}"
        );
        found
    };
    let edge_server = one("edge", 2)[0];
    let edge_client = one("edge", 3)[0];
    let frontend_server = one("frontend", 2)[0];
    let frontend_clients = one("frontend", 3);
    // edge's server span continues the incoming trace...
    assert_eq!(edge_server.parent, PARENT, "{dump}");
    assert_eq!(edge_server.name, "GET /", "{dump}");
    assert_eq!(edge_server.attribute("http.route"), Some("/"));
    // ...its upstream call is its child, and frontend's server span the
    // child of that call...
    assert_eq!(edge_client.parent, edge_server.span_id, "{dump}");
    assert_eq!(frontend_server.parent, edge_client.span_id, "{dump}");
    assert_eq!(frontend_server.name, "GET /d/{service}/{document}");
    assert_eq!(
        frontend_server.attribute("http.request.method"),
        Some("GET")
    );
    assert_eq!(
        frontend_server.attribute("http.route"),
        Some("/d/{service}/{document}")
    );
    assert_eq!(
        frontend_server.attribute("http.response.status_code"),
        Some("200")
    );
    assert_eq!(
        frontend_server.attribute("url.path"),
        Some(document_path(KEY).split('?').next().unwrap())
    );
    assert_eq!(
        frontend_server.attribute("wharf.request_id"),
        Some("trace-test-request-1")
    );
    // ...whose API calls are its children...
    assert!(frontend_clients.len() >= 2, "{dump}");
    for client in &frontend_clients {
        assert_eq!(client.parent, frontend_server.span_id, "{dump}");
    }
    // ...and the API received each call's own span as its parent.
    assert!(seen.len() >= 2);
    for request in seen {
        let traceparent = request.header("traceparent").unwrap();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts[1], TRACE, "{traceparent}");
        assert!(
            frontend_clients.iter().any(|c| c.span_id == parts[2]),
            "{traceparent} is not one of frontend's client spans: {dump}"
        );
    }
}

/// The key never leaves in a span: not in an attribute, not anywhere in
/// what was exported.
fn no_key_exported(receiver: &Receiver) {
    for span in receiver.spans() {
        for (name, value) in &span.attributes {
            assert!(!value.contains(KEY), "{name}={value} shows the key");
        }
    }
    for (content_type, body) in receiver.bodies.lock().unwrap().iter() {
        assert!(
            !body.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "a {content_type} export shows the key"
        );
    }
}

#[test]
fn a_request_without_traceparent_starts_a_trace_the_access_log_names() {
    let receiver = Receiver::start();
    let frontend = frontend(&tracing_env(&receiver));
    let code = get(&format!("http://{}/security.txt", frontend.addr()), &[]);
    assert!(code.starts_with('3'), "{code}");
    assert!(
        eventually(Duration::from_secs(15), || !receiver.spans().is_empty()),
        "no span: {}",
        frontend.logs()
    );
    let span = receiver.spans()[0].clone();
    assert_eq!(span.service, "frontend");
    assert!(span.parent.is_empty(), "a root span: {span:?}");
    let logs = frontend.stop();
    let line = logs
        .lines()
        .find(|l| l.contains("Served request") && l.contains("security.txt"))
        .unwrap_or_else(|| panic!("no access log line: {logs}"));
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["trace_id"], span.trace_id.as_str(), "{line}");
    assert!(entry["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
}
