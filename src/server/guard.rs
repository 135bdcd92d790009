//! What every response carries and every request must pass before it reaches a handler,
//! token or not: the Host must be this server's (a DNS-rebinding page names its own
//! domain), a browser's state-changing request must come from this server's own pages
//! (CSRF: a page on another site, or on another port of localhost, is refused), and
//! responses tell browsers not to frame, sniff or run what they did not mean to.

use crate::api::ErrorCode;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

/// The dashboard's own files and nothing else; inline `style` attributes are allowed (the
/// bars' widths), inline scripts are not.
const DASHBOARD_CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";
/// API answers are data: a browser that opens one (an artifact, an export) runs nothing
/// of it in this origin.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// Which names the server answers to besides IP addresses and `localhost`.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    names: Arc<Vec<String>>,
}

impl Hosts {
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Hosts {
            names: Arc::new(names.into_iter().map(|n| n.to_ascii_lowercase()).collect()),
        }
    }

    /// Whether a Host header (name or address, with or without a port) is this server.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        name == "localhost" || name.parse::<IpAddr>().is_ok() || self.names.contains(&name)
    }
}

/// `example.org:7878` → `example.org`; `[::1]:7878` → `::1`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // `[::1]` or `[::1]:7878`, nothing else after the bracket.
        return match rest.split_once(']') {
            Some((addr, "")) => addr,
            Some((addr, port))
                if port
                    .strip_prefix(':')
                    .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit())) =>
            {
                addr
            }
            _ => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `http://example.org:7878` → `example.org:7878`.
fn origin_authority(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.trim_end_matches('/'))
}

fn refuse(status: StatusCode, message: String) -> Response {
    super::routes::ApiError::new(status, ErrorCode::ForeignOrigin, message).into_response()
}

/// Middleware: the Host and Origin checks, then the headers.
pub async fn guard(State(hosts): State<Hosts>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if headers
        .get(header::HOST)
        .is_some_and(|h| h.to_str().is_err())
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the Host header is not ASCII".to_string(),
        );
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(host) = &host {
        if !hosts.allows(host) {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server does not answer to the name `{host}`; if that is its public \
                     name, start it with --public-host {}",
                    host_name(host)
                ),
            );
        }
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let from_elsewhere = match (origin, &host) {
            // A browser names the page that sent it; "null" is an opaque origin.
            (Some(origin), Some(host)) => {
                let web = origin.starts_with("http://") || origin.starts_with("https://");
                !web || origin_authority(origin).is_none_or(|a| !a.eq_ignore_ascii_case(host))
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        let fetch_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_ascii_lowercase();
        if from_elsewhere || matches!(fetch_site.as_str(), "cross-site" | "same-site") {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "{} {} came from a page of another site ({}); only this server's own \
                     dashboard, or a client that is not a browser, may change things",
                    req.method(),
                    req.uri().path(),
                    origin.unwrap_or(&fetch_site)
                ),
            );
        }
    }
    let api = req.uri().path().starts_with(crate::api::API_PREFIX);
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(if api { API_CSP } else { DASHBOARD_CSP }),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_answers_to_addresses_localhost_and_its_public_names() {
        let hosts = Hosts::new(["assay.lab.example".to_string()]);
        for ok in [
            "127.0.0.1:7878",
            "localhost:7878",
            "LOCALHOST",
            "[::1]:7878",
            "10.0.0.5",
            "assay.lab.example:443",
            "Assay.Lab.Example",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7878",
            "127.0.0.1.evil.example",
            "localhost.evil.example:7878",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }

    #[test]
    fn origins_are_compared_by_authority() {
        assert_eq!(
            origin_authority("http://127.0.0.1:7878"),
            Some("127.0.0.1:7878")
        );
        assert_eq!(
            origin_authority("https://assay.lab.example"),
            Some("assay.lab.example")
        );
        assert_eq!(origin_authority("null"), None);
    }
}
