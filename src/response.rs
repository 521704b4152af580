//! HTTP responses as bytes: status line, the contract's headers, a JSON body. No I/O.
//!
//! Invariants: every response carries `Content-Type: application/json` and an exact
//! `Content-Length`; `Connection: close` appears exactly when the connection will be closed
//! after the response; CORS headers appear exactly when the caller passes an origin (the
//! callers pass `--cors-origin` on every answer of the server, errors included).

use std::io::Write as _;

/// An error answer of the contract (section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

impl ApiError {
    pub const fn new(status: u16, code: &'static str, message: &'static str) -> ApiError {
        ApiError {
            status,
            code,
            message,
        }
    }

    /// 400, 408, 431 and 503 close the connection; 401, 403, 404 and 405 keep it.
    pub fn closes(&self) -> bool {
        matches!(self.status, 400 | 408 | 413 | 431 | 503) || self.status >= 500
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48 + self.code.len() + self.message.len());
        b.extend_from_slice(b"{\"errorcode\":");
        json_string(&mut b, self.code);
        b.extend_from_slice(b",\"message\":");
        json_string(&mut b, self.message);
        b.push(b'}');
        b
    }
}

pub const BAD_REQUEST: ApiError =
    ApiError::new(400, "bad_request", "malformed request line or headers");
pub const BODY_NOT_ALLOWED: ApiError = ApiError::new(
    400,
    "body_not_allowed",
    "a GET request must not carry a body",
);
pub const NO_CHANNEL: ApiError = ApiError::new(400, "no_channel", "name at least one channel");
pub const BAD_CURSOR: ApiError = ApiError::new(
    400,
    "bad_cursor",
    "the cursor does not parse or points past the newest message",
);
pub const TOKEN_MISSING: ApiError = ApiError::new(
    401,
    "token_missing",
    "a subscriber token is required (Authorization: Bearer or sid)",
);
pub const NOT_BEARER: ApiError = ApiError::new(
    401,
    "token_malformed",
    "the Authorization header must use the Bearer scheme",
);
pub const SESSION_UNKNOWN: ApiError = ApiError::new(
    401,
    "session_unknown",
    "no such session: it was never registered, has expired or has ended",
);
pub const SESSION_ENDED: ApiError = ApiError::new(
    401,
    "session_ended",
    "the session was ended by the application",
);
pub const FORBIDDEN_CHANNEL: ApiError = ApiError::new(
    403,
    "channel_forbidden",
    "the token does not grant a requested channel",
);
pub const NOT_FOUND: ApiError = ApiError::new(404, "not_found", "no such endpoint");
pub const METHOD_NOT_ALLOWED: ApiError =
    ApiError::new(405, "method_not_allowed", "method not allowed on this path");
pub const REQUEST_TIMEOUT: ApiError = ApiError::new(
    408,
    "request_timeout",
    "the request head did not arrive in time",
);
pub const HEAD_TOO_LARGE: ApiError = ApiError::new(
    431,
    "headers_too_large",
    "request line and headers exceed 8192 bytes",
);
pub const OVER_CAPACITY: ApiError = ApiError::new(
    503,
    "over_capacity",
    "the server holds its maximum number of connections",
);
pub const DRAINING: ApiError = ApiError::new(503, "draining", "the server is shutting down");

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends `s` as a JSON string literal.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is exact and cannot fail for a str into a Vec.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// What varies between responses besides status and body.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extra<'a> {
    /// Close the connection after this response.
    pub close: bool,
    /// `Access-Control-Allow-Origin` value (`--cors-origin`, on every answer).
    pub cors: Option<&'a str>,
    /// `Allow` header (405, OPTIONS).
    pub allow: Option<&'a str>,
    /// `ETag: "CURSOR"` plus `Cache-Control: no-store`.
    pub etag: Option<&'a str>,
    /// CORS preflight headers (only with `cors`).
    pub preflight: bool,
    /// `Retry-After` (503).
    pub retry_after: bool,
    /// Headers only (an answer to HEAD): `Content-Length` still names the body's length.
    pub no_body: bool,
}

/// Appends a whole response.
pub fn write(out: &mut Vec<u8>, status: u16, extra: &Extra<'_>, body: &[u8]) {
    write_head(out, status, extra, body.len());
    if status != 204 && !extra.no_body {
        out.extend_from_slice(body);
    }
}

/// Appends the status line and headers of a response whose body is `body_len` bytes (written
/// by the caller, or from other buffers).
pub fn write_head(out: &mut Vec<u8>, status: u16, extra: &Extra<'_>, body_len: usize) {
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason(status));
    if status != 204 {
        out.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    if let Some(tag) = extra.etag {
        out.extend_from_slice(b"Cache-Control: no-store\r\nETag: \"");
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b"\"\r\n");
    }
    if let Some(allow) = extra.allow {
        let _ = write!(out, "Allow: {allow}\r\n");
    }
    if extra.retry_after {
        let _ = write!(out, "Retry-After: {RETRY_AFTER_SECS}\r\n");
    }
    if let Some(origin) = extra.cors {
        write_cors(out, origin, extra.preflight);
    }
    if extra.close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    if status != 204 {
        let _ = write!(out, "Content-Length: {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the CORS headers allowing `origin` (and the preflight's, when `preflight`).
pub fn write_cors(out: &mut Vec<u8>, origin: &str, preflight: bool) {
    let _ = write!(
        out,
        "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Expose-Headers: ETag, Retry-After\r\nVary: Origin\r\n"
    );
    if preflight {
        out.extend_from_slice(
            b"Access-Control-Allow-Methods: GET, OPTIONS\r\nAccess-Control-Allow-Headers: Authorization, If-None-Match, Last-Event-ID\r\nAccess-Control-Max-Age: 600\r\n",
        );
    }
}

/// An error response with the server's CORS origin (every answer carries it when set).
pub fn error_bytes(err: &ApiError, close: bool, cors: Option<&str>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    let extra = Extra {
        close,
        cors,
        ..Extra::default()
    };
    write_error(&mut bytes, err, &extra);
    bytes
}

/// Appends an error response; `close` is forced on for the statuses that close.
pub fn write_error(out: &mut Vec<u8>, err: &ApiError, extra: &Extra<'_>) {
    let mut e = *extra;
    e.close |= err.closes();
    e.retry_after |= err.status == 503;
    e.etag = None;
    write(out, err.status, &e, &err.body());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut h);
        let n = match r.parse(bytes).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        let hs = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        (r.code.unwrap(), hs, bytes[n..].to_vec())
    }

    #[test]
    fn error_response_shape() {
        let mut out = Vec::new();
        write_error(&mut out, &OVER_CAPACITY, &Extra::default());
        let (code, hs, body) = parse(&out);
        assert_eq!(code, 503);
        let has = |n: &str, v: &str| hs.iter().any(|(a, b)| a == n && b == v);
        assert!(has("Connection", "close") && has("Retry-After", "1"));
        assert!(has("Content-Length", &body.len().to_string()));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errorcode"], "over_capacity");
        assert!(!NOT_FOUND.closes() && BAD_REQUEST.closes() && !FORBIDDEN_CHANNEL.closes());
    }

    #[test]
    fn answer_and_preflight_headers() {
        let mut out = Vec::new();
        let e = Extra {
            cors: Some("https://a.example"),
            etag: Some("abc1"),
            ..Extra::default()
        };
        write(&mut out, 200, &e, b"{}");
        let (code, hs, body) = parse(&out);
        assert_eq!((code, body.as_slice()), (200, &b"{}"[..]));
        let has = |n: &str, v: &str| hs.iter().any(|(a, b)| a == n && b == v);
        assert!(has("ETag", "\"abc1\"") && has("Cache-Control", "no-store"));
        assert!(has("Access-Control-Allow-Origin", "https://a.example") && has("Vary", "Origin"));
        assert!(!hs.iter().any(|(a, _)| a == "Connection"));
        let mut out = Vec::new();
        let e = Extra {
            cors: Some("*"),
            allow: Some("GET, OPTIONS"),
            preflight: true,
            ..Extra::default()
        };
        write(&mut out, 204, &e, b"");
        let (code, hs, body) = parse(&out);
        assert_eq!((code, body.len()), (204, 0));
        assert!(hs
            .iter()
            .any(|(a, b)| a == "Access-Control-Max-Age" && b == "600"));
        assert!(hs.iter().any(|(a, b)| a == "Allow" && b == "GET, OPTIONS"));
    }
}
