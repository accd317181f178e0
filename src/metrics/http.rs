//! The metrics endpoint: `GET /metrics` (Prometheus text), `GET /healthz`, and the status
//! page (`GET /`, `GET /status.json`, `POST /test-credential`; see [`super::status`]). A deliberately
//! small HTTP/1.1 server: one request per connection, no bodies, strict limits on header
//! size and count, a deadline for the whole request head (so a slowloris cannot hold a
//! connection), a cap on concurrent connections, and no panics on garbage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Metrics;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 64;
/// The whole request head must arrive within this time.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The response must be written within this time.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent connections; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// What `/healthz` reports.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once every listener is bound.
    pub up: AtomicBool,
    /// Set while draining on shutdown.
    pub draining: AtomicBool,
}

/// The status page and who may see it.
pub struct Page {
    pub status: Arc<super::status::Status>,
    /// Asked for by the page, `/status.json` and `/test-credential` (bearer header, cookie,
    /// or `?token=` once); `None` on a loopback endpoint, where anyone who reaches it may.
    pub token: Option<String>,
}

/// Serves the endpoint until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>, page: Arc<Page>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let health = health.clone();
        let page = page.clone();
        tokio::spawn(async move {
            let _permit = permit;
            connection(stream, &metrics, &health, &page).await;
        });
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// After the `?`, if any.
    pub query: &'a str,
    /// `Authorization: Bearer X`'s X.
    pub bearer: Option<&'a str>,
    /// The `turnd_token` cookie.
    pub cookie_token: Option<&'a str>,
    /// The request declared a body (Content-Length above 0 or Transfer-Encoding).
    pub has_body: bool,
    /// The client's Accept header asks for OpenMetrics.
    pub openmetrics: bool,
}

/// Why a request head was refused, as the status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    BadRequest,
    TooLarge,
}

/// Parses a complete request head (up to and excluding the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request<'_>, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::BadRequest)?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or(HeadError::BadRequest)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::BadRequest);
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Err(HeadError::BadRequest);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut has_body = false;
    let mut openmetrics = false;
    let mut bearer = None;
    let mut cookie_token = None;
    let mut count = 0;
    for line in lines {
        count += 1;
        if count > MAX_HEADERS {
            return Err(HeadError::TooLarge);
        }
        let (name, value) = line.split_once(':').ok_or(HeadError::BadRequest)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            has_body |= value.parse::<u64>().map_err(|_| HeadError::BadRequest)? > 0;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        } else if name.eq_ignore_ascii_case("accept") {
            openmetrics |= value.contains("application/openmetrics-text");
        } else if name.eq_ignore_ascii_case("authorization") {
            bearer = value.strip_prefix("Bearer ").map(str::trim);
        } else if name.eq_ignore_ascii_case("cookie") {
            cookie_token = value
                .split(';')
                .filter_map(|c| c.trim().strip_prefix("turnd_token="))
                .next();
        }
    }
    Ok(Request {
        method,
        path,
        query,
        bearer,
        cookie_token,
        has_body,
        openmetrics,
    })
}

/// Reads the request head within the deadline and the size limit.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, u16> {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(end);
        }
        // The request line is printable ASCII: refuse binary garbage at once.
        let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap_or(buf.len());
        if buf[..line_end].iter().any(|&b| !(0x20..0x7f).contains(&b)) {
            return Err(400);
        }
        if buf.len() >= MAX_HEAD {
            return Err(431);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err(408),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(0),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether `req` may see the page: no token asked for, or the right one (compared in
/// constant time) from the header, the cookie or the query.
fn allowed(req: &Request<'_>, page: &Page) -> bool {
    let Some(token) = &page.token else { return true };
    let same = |t: &str| -> bool { subtle::ConstantTimeEq::ct_eq(t.as_bytes(), token.as_bytes()).into() };
    req.bearer.is_some_and(same) || req.cookie_token.is_some_and(same) || query_token(req.query).is_some_and(same)
}

fn query_token(query: &str) -> Option<&str> {
    query.split('&').find_map(|kv| kv.strip_prefix("token="))
}

/// The status page's routes; `None` for any other path.
fn page_route(
    req: &Request<'_>,
    health: &Health,
    metrics: &Metrics,
    page: &Page,
) -> Option<(u16, &'static str, String, String)> {
    let text = "text/plain; charset=utf-8";
    let route = matches!(req.path, "/" | "/status.json" | "/test-credential");
    if !route {
        return None;
    }
    if !allowed(req, page) {
        return Some((
            401,
            text,
            "this page needs the token: open the link turnd logged at start (?token=...)
"
            .into(),
            String::new(),
        ));
    }
    // A ?token= link sets the cookie and takes the token out of the address bar.
    if req.path == "/" && query_token(req.query).is_some() {
        let token = page.token.as_deref().unwrap_or_default();
        return Some((
            303,
            text,
            String::new(),
            format!("Set-Cookie: turnd_token={token}; Path=/; HttpOnly; SameSite=Strict\r\nLocation: /\r\n"),
        ));
    }
    let draining = health.draining.load(Ordering::Relaxed);
    Some(match (req.method, req.path) {
        ("GET" | "HEAD", "/") => (
            200,
            "text/html; charset=utf-8",
            super::status::PAGE.to_string(),
            String::new(),
        ),
        ("GET" | "HEAD", "/status.json") => (
            200,
            "application/json",
            page.status.json(metrics, draining),
            String::new(),
        ),
        ("POST", "/test-credential") => {
            let unix = crate::sys::unix_time().as_secs();
            match page.status.test.as_ref().and_then(|t| t.mint(unix)) {
                Some(v) => (200, "application/json", v.to_string(), String::new()),
                None => (
                    429,
                    text,
                    "too many self-tests this minute; try again soon
"
                    .into(),
                    String::new(),
                ),
            }
        }
        _ => (
            405,
            text,
            "method not allowed
"
            .into(),
            "Allow: GET, HEAD, POST\r\n".into(),
        ),
    })
}

async fn connection(mut stream: TcpStream, metrics: &Metrics, health: &Health, page: &Page) {
    let mut buf = Vec::with_capacity(1024);
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body, extra): (u16, &str, String, String) = match read_head(&mut stream, &mut buf).await
    {
        Err(0) => return,
        Err(code) => (code, text, reason(code).to_string() + "\n", String::new()),
        Ok(end) => match parse_head(&buf[..end]) {
            Err(HeadError::TooLarge) => (431, text, "too many headers\n".into(), String::new()),
            Err(HeadError::BadRequest) => (400, text, "bad request\n".into(), String::new()),
            Ok(req) if req.has_body => (413, text, "no request bodies\n".into(), String::new()),
            Ok(req) => match page_route(&req, health, metrics, page) {
                Some(answer) => answer,
                None if req.method != "GET" && req.method != "HEAD" => {
                    (405, text, "only GET\n".into(), "Allow: GET, HEAD\r\n".into())
                }
                None => match req.path {
                    "/metrics" if req.openmetrics => (
                        200,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        metrics.encode(),
                        String::new(),
                    ),
                    "/metrics" => (
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.encode_prometheus(),
                        String::new(),
                    ),
                    "/healthz" => {
                        let body = if health.draining.load(Ordering::Relaxed) {
                            (503, "draining\n")
                        } else if health.up.load(Ordering::Relaxed) {
                            (200, "ok\n")
                        } else {
                            (503, "starting\n")
                        };
                        (body.0, text, body.1.into(), String::new())
                    }
                    _ => (404, text, "not found\n".into(), String::new()),
                },
            },
        },
    };
    let head_only = buf.starts_with(b"HEAD ");
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        303 => "See Other",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_heads() {
        let r = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*").unwrap();
        assert_eq!(
            (r.method, r.path, r.has_body, r.openmetrics),
            ("GET", "/metrics", false, false)
        );
        let r = parse_head(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0").unwrap();
        assert!(r.openmetrics);
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: 5").unwrap().has_body);
        assert_eq!(parse_head(b"GET /metrics"), Err(HeadError::BadRequest));
        assert_eq!(parse_head(b"GET metrics HTTP/1.1"), Err(HeadError::BadRequest));
        assert_eq!(parse_head(b"\xff\xfe"), Err(HeadError::BadRequest));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nno colon"), Err(HeadError::BadRequest));
        let many = format!("GET / HTTP/1.1{}", "\r\nX: y".repeat(MAX_HEADERS + 1));
        assert_eq!(parse_head(many.as_bytes()), Err(HeadError::TooLarge));
    }
}
