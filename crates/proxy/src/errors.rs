//! The proxy's own answers and log texts for failures: nginx-like error
//! pages, and an error with its causes on one line.

use http::{header, HeaderValue, Response, StatusCode};
use wharf_http::{body as wbody, ResponseBody};

/// A short error page, like nginx's.
pub fn error_page(status: StatusCode) -> Response<ResponseBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    let html = format!(
        "<html>\n<head><title>{code} {reason}</title></head>\n<body>\n<h1>{code} {reason}</h1>\n</body>\n</html>\n"
    );
    let mut response = Response::new(wbody::full(html));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// An error and its sources, `: `-joined, for logs.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
