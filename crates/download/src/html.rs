//! The pages, as plain Rust string builders over GOV.UK Frontend markup.
//!
//! Why not a template engine: six short pages do not pay for a proc-macro
//! engine's compile time on a 2-core machine, and every interpolation here goes
//! through [`esc`] (text and attribute values alike), so escaping is visible at
//! each use. Snapshot tests pin the output.

use std::fmt::Write as _;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::assets::Assets;
use crate::present::Contact;

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query value (everything but unreserved characters, as
/// UTF-8, upper-case hex).
pub(crate) fn url_encode(text: &str) -> String {
    utf8_percent_encode(text, QUERY_VALUE).to_string()
}

/// What every page shares.
pub(crate) struct Chrome<'a> {
    /// The CSP nonce of this response.
    pub(crate) nonce: &'a str,
    /// Fingerprinted asset URLs (or none: the page still works, unstyled).
    pub(crate) assets: &'a Assets,
}

/// The support address the error pages give.
const SUPPORT_EMAIL: &str = "notify-support@digital.cabinet-office.gov.uk";

/// A whole page: `title` (already plain text) and the main column's HTML.
pub(crate) fn page(chrome: &Chrome<'_>, title: &str, main_column: &str) -> String {
    let nonce = esc(chrome.nonce);
    let mut head_links = String::new();
    if let Some(css) = chrome.assets.url("govuk-frontend.min.css") {
        let _ = write!(
            head_links,
            "\n  <link rel=\"stylesheet\" href=\"{}\">",
            esc(css)
        );
    }
    if let Some(icon) = chrome.assets.url("assets/images/favicon.ico") {
        let _ = write!(
            head_links,
            "\n  <link rel=\"icon\" sizes=\"48x48\" href=\"{}\">",
            esc(icon)
        );
    }
    if let Some(icon) = chrome.assets.url("assets/images/favicon.svg") {
        let _ = write!(
            head_links,
            "\n  <link rel=\"icon\" sizes=\"any\" href=\"{}\" type=\"image/svg+xml\">",
            esc(icon)
        );
    }
    let script = chrome.assets.url("govuk-frontend.min.js").map_or_else(String::new, |js| {
        format!(
            "\n  <script type=\"module\" nonce=\"{nonce}\">import {{ initAll }} from \"{}\"; initAll();</script>",
            esc(js)
        )
    });
    format!(
        r##"<!DOCTYPE html>
<html lang="en" class="govuk-template">
<head>
  <meta charset="utf-8">
  <title>{title} – GOV.UK</title>
  <meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
  <meta name="theme-color" content="#0b0c0c">
  <meta name="referrer" content="no-referrer">
  <meta name="robots" content="noindex, nofollow">{head_links}
  <style nonce="{nonce}">.govuk-header__container {{ border-bottom-color: #1d70b8; }}</style>
</head>
<body class="govuk-template__body">
  <script nonce="{nonce}">document.body.className += ('noModule' in HTMLScriptElement.prototype ? ' govuk-frontend-supported' : '');</script>
  <a href="#main-content" class="govuk-skip-link" data-module="govuk-skip-link">Skip to main content</a>
  <header class="govuk-header" data-module="govuk-header">
    <div class="govuk-header__container govuk-width-container">
      <div class="govuk-header__logo">
        <a href="https://www.gov.uk" class="govuk-header__link govuk-header__link--homepage" rel="noreferrer">
          <span class="govuk-header__logotype">GOV.UK</span>
        </a>
      </div>
    </div>
  </header>
  <div class="govuk-width-container">
    <main class="govuk-main-wrapper" id="main-content" role="main">
      <div class="govuk-grid-row">
        <div class="govuk-grid-column-two-thirds">
{main_column}
        </div>
      </div>
    </main>
  </div>
  <footer class="govuk-footer">
    <div class="govuk-width-container">
      <div class="govuk-footer__meta">
        <div class="govuk-footer__meta-item govuk-footer__meta-item--grow">
          <span class="govuk-footer__licence-description">All content is available under the Open Government Licence v3.0, except where otherwise stated</span>
        </div>
        <div class="govuk-footer__meta-item">
          <span class="govuk-footer__copyright-logo">© Crown copyright</span>
        </div>
      </div>
    </div>
  </footer>{script}
</body>
</html>
"##,
        title = esc(title),
    )
}

fn h1(text: &str) -> String {
    format!(
        "          <h1 class=\"govuk-heading-l\">{}</h1>\n",
        esc(text)
    )
}

fn paragraph(html: &str) -> String {
    format!("          <p class=\"govuk-body\">{html}</p>\n")
}

/// "If you have any questions, …" for the service's contact details (nothing
/// when the service has none).
pub(crate) fn contact_paragraph(service_name: &str, contact: &Contact) -> String {
    match contact {
        Contact::Link(url) => paragraph(&format!(
            "If you have any questions, <a href=\"{}\" class=\"govuk-link\" rel=\"noreferrer\">contact {}</a>.",
            esc(url),
            esc(service_name)
        )),
        Contact::Email(address) => paragraph(&format!(
            "If you have any questions, email <a href=\"mailto:{}\" class=\"govuk-link\">{}</a>.",
            esc(address),
            esc(address)
        )),
        Contact::Other(text) => paragraph(&format!("If you have any questions, call {}.", esc(text))),
        Contact::None => String::new(),
    }
}

/// The service as the pages need it.
pub(crate) struct ServiceView<'a> {
    pub(crate) name: &'a str,
    pub(crate) contact: &'a Contact,
}

/// `GET /d/{service}/{document}`: "You have a file to download".
pub(crate) fn landing(
    chrome: &Chrome<'_>,
    service: &ServiceView<'_>,
    continue_url: &str,
) -> String {
    let title = "You have a file to download";
    let mut main = h1(title);
    // DDF: `{{ service_name or '[SERVICE_NAME]'}}`: only an empty name.
    let name = if service.name.is_empty() {
        "[SERVICE_NAME]"
    } else {
        service.name
    };
    main.push_str(&paragraph(&format!(
        "{} sent you a file to download.",
        esc(name)
    )));
    main.push_str(&paragraph(&format!(
        "<a href=\"{}\" role=\"button\" draggable=\"false\" class=\"govuk-button govuk-button--start\" data-module=\"govuk-button\">Continue</a>",
        esc(continue_url)
    )));
    main.push_str(&contact_paragraph(service.name, service.contact));
    page(chrome, title, &main)
}

/// An error on the confirm form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormError {
    /// About the email address field (shown above the input too).
    Field(String),
    /// About the form as a whole (summary only); already HTML.
    FormHtml(String),
}

/// `GET|POST …/confirm-email-address`: the email form.
pub(crate) fn confirm_email(
    chrome: &Chrome<'_>,
    service: &ServiceView<'_>,
    action: &str,
    csrf_token: &str,
    value: Option<&str>,
    error: Option<&FormError>,
) -> String {
    let heading = "Confirm your email address";
    let mut main = String::new();
    if let Some(error) = error {
        let item = match error {
            FormError::Field(message) => {
                format!("<a href=\"#email_address\">{}</a>", esc(message))
            }
            FormError::FormHtml(html) => html.clone(),
        };
        let _ = write!(
            main,
            r#"          <div class="govuk-error-summary" data-module="govuk-error-summary">
            <div role="alert">
              <h2 class="govuk-error-summary__title">There is a problem</h2>
              <div class="govuk-error-summary__body">
                <ul class="govuk-list govuk-error-summary__list">
                  <li>{item}</li>
                </ul>
              </div>
            </div>
          </div>
"#
        );
    }
    main.push_str(&h1(heading));
    main.push_str(&paragraph(
        "For security, we need to confirm the email address the file was sent to before you can download it.",
    ));
    let field_error = match error {
        Some(FormError::Field(message)) => Some(message),
        _ => None,
    };
    let (group_class, input_class, described, error_html) = match field_error {
        Some(message) => (
            "govuk-form-group govuk-form-group--error",
            "govuk-input govuk-input--error",
            " aria-describedby=\"email_address-error\"",
            format!(
                "\n              <p id=\"email_address-error\" class=\"govuk-error-message\"><span class=\"govuk-visually-hidden\">Error:</span> {}</p>",
                esc(message)
            ),
        ),
        None => ("govuk-form-group", "govuk-input", "", String::new()),
    };
    let value_attr = value.map_or_else(String::new, |v| format!(" value=\"{}\"", esc(v)));
    let _ = write!(
        main,
        r#"          <form method="post" action="{action}" autocomplete="off" novalidate>
            <input type="hidden" name="csrf_token" value="{csrf}">
            <div class="{group_class}">
              <label class="govuk-label" for="email_address">Email address</label>{error_html}
              <input class="{input_class}" id="email_address" name="email_address" type="email" spellcheck="false" autocomplete="email"{value_attr}{described}>
            </div>
            <button type="submit" class="govuk-button" data-module="govuk-button">Continue</button>
          </form>
"#,
        action = esc(action),
        csrf = esc(csrf_token),
    );
    main.push_str(&contact_paragraph(service.name, service.contact));
    let title = if error.is_some() {
        format!("Error: {heading}")
    } else {
        heading.to_owned()
    };
    page(chrome, &title, &main)
}

/// What the download page says about the file.
pub(crate) struct FileView<'a> {
    pub(crate) url: &'a str,
    pub(crate) type_name: &'a str,
    pub(crate) size: &'a str,
    /// The formatted expiry date, or `None` when it is not known.
    pub(crate) expiry: Option<&'a str>,
}

/// `GET …/download`: "Download your file".
pub(crate) fn download(
    chrome: &Chrome<'_>,
    service: &ServiceView<'_>,
    file: &FileView<'_>,
) -> String {
    let title = "Download your file";
    let mut main = h1(title);
    main.push_str(&paragraph(&match file.expiry {
        Some(date) => format!("This file is available to download until {}.", esc(date)),
        None => "File expiry information is temporarily unavailable.".to_owned(),
    }));
    main.push_str(&paragraph(
        "Make sure you save your file somewhere you can find it.",
    ));
    main.push_str(&paragraph(&format!(
        "<a href=\"{}\" download class=\"govuk-link\" rel=\"noreferrer\">Download this {} ({}) to your device</a>",
        esc(file.url),
        esc(file.type_name),
        esc(file.size)
    )));
    main.push_str(&contact_paragraph(service.name, service.contact));
    page(chrome, title, &main)
}

/// Why a document page cannot show the file (DDF's `status_code` in
/// `views/file-unavailable.html`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// 404: the document API refused the key or does not know the document.
    NotFound,
    /// 410: the document expired or was deleted.
    Gone,
}

/// DDF's `views/file-unavailable.html`: "Page not found" (404) or "No longer
/// available" (410), naming the service and how to contact it.
pub(crate) fn file_unavailable(
    chrome: &Chrome<'_>,
    service: &ServiceView<'_>,
    why: Unavailable,
) -> String {
    let title = match why {
        Unavailable::NotFound => "Page not found",
        Unavailable::Gone => "No longer available",
    };
    let mut main = h1(title);
    match why {
        Unavailable::NotFound => {
            main.push_str(&paragraph(
                "If you selected a link in an email, the file may have expired or been deleted.",
            ));
            main.push_str(&paragraph(
                "If you typed the web address, check it is correct.",
            ));
            main.push_str(&paragraph(
                "If you pasted the web address, check you copied the entire address.",
            ));
        }
        Unavailable::Gone => main.push_str(&paragraph(&format!(
            "The file {} sent you has expired or been deleted.",
            esc(service.name)
        ))),
    }
    main.push_str(&contact_paragraph(service.name, service.contact));
    page(chrome, title, &main)
}

/// 404 "Page not found".
pub(crate) fn not_found(chrome: &Chrome<'_>) -> String {
    let title = "Page not found";
    let mut main = h1(title);
    main.push_str(&paragraph(
        "If you selected a link in an email, contact the sender to tell them you cannot download your file.",
    ));
    main.push_str(&paragraph(
        "If you typed the web address, check it is correct.",
    ));
    main.push_str(&paragraph(
        "If you pasted the web address, check you copied the entire address.",
    ));
    page(chrome, title, &main)
}

/// 429 "Cannot access document", with a link back to the form.
pub(crate) fn too_many_requests(chrome: &Chrome<'_>, go_back: &str) -> String {
    let title = "Cannot access document";
    let mut main = h1(title);
    main.push_str(&paragraph(
        "There have been too many attempts to access this document recently. Please try again in a few minutes.",
    ));
    main.push_str(&paragraph(&format!(
        "<a class=\"govuk-link govuk-link--no-visited-state\" href=\"{}\">Go back to confirm your email address</a>.",
        esc(go_back)
    )));
    main.push_str(&paragraph(&format!(
        "If you’re still not able to access the document, please email <a href=\"mailto:{SUPPORT_EMAIL}\" class=\"govuk-link\">{SUPPORT_EMAIL}</a>."
    )));
    page(chrome, title, &main)
}

/// The service page for a Notify API 401/403: the problem is ours, report it.
pub(crate) fn service_problem(chrome: &Chrome<'_>) -> String {
    let title = "Sorry, there’s a problem with the service";
    let mut main = h1(title);
    main.push_str(&paragraph("You cannot download your file at the moment."));
    main.push_str(&paragraph(&format!(
        "To report the problem, email <a href=\"mailto:{SUPPORT_EMAIL}\" class=\"govuk-link\">{SUPPORT_EMAIL}</a>."
    )));
    page(chrome, title, &main)
}

/// 500/502/504 "Sorry, there's a problem with the service".
pub(crate) fn server_error(chrome: &Chrome<'_>) -> String {
    let title = "Sorry, there’s a problem with the service";
    let mut main = h1(title);
    main.push_str(&paragraph("You cannot download your file at the moment."));
    main.push_str(&paragraph("Try again later."));
    page(chrome, title, &main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
    }

    /// Query values are percent-encoded today as pinned here: everything but
    /// RFC 3986's unreserved characters, as UTF-8, with upper-case hex.
    #[test]
    fn url_encoding_pins_these_inputs() {
        for (text, want) in [
            ("", ""),
            ("AZaz09-_.~", "AZaz09-_.~"),
            ("a b", "a%20b"),
            ("+", "%2B"),
            ("%", "%25"),
            ("%41", "%2541"),
            ("&=?#/:;@", "%26%3D%3F%23%2F%3A%3B%40"),
            ("!$'()*,", "%21%24%27%28%29%2A%2C"),
            ("\"<>\\^`{|}[]", "%22%3C%3E%5C%5E%60%7B%7C%7D%5B%5D"),
            ("\0\t\n\u{7f}", "%00%09%0A%7F"),
            ("\u{e9}", "%C3%A9"),
            ("\u{1f600}", "%F0%9F%98%80"),
            ("\u{fffd}", "%EF%BF%BD"),
        ] {
            assert_eq!(url_encode(text), want, "{text:?}");
        }
    }

    #[test]
    fn contact_paragraphs_escape_service_data() {
        let html = contact_paragraph(
            "<b>Evil</b>",
            &Contact::Link("https://x\" onmouseover=\"alert(1)".into()),
        );
        assert!(!html.contains("<b>"));
        assert!(html.contains("href=\"https://x&quot; onmouseover=&quot;alert(1)\""));
        assert_eq!(contact_paragraph("S", &Contact::None), "");
    }
}
