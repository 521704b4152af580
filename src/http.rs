//! HTTP/1.x request head parsing, free of I/O.
//!
//! [`parse_head`] turns the bytes a connection has read so far into a [`RequestHead`] holding only
//! what pnsd acts on (method, path, query, keep-alive, body framing, credentials, ETag), copied out
//! of the buffer so the caller may drop or reuse it at once.
//!
//! Invariants:
//! - The answer depends only on the bytes, never on how they were split across reads: a prefix of
//!   a valid head is `Ok(None)`, the whole head is `Ok(Some)` with the same fields at every split.
//! - Only the first [`MAX_HEAD`] bytes of the buffer are ever examined, so a parse costs at most
//!   one pass over 8 KiB however much the peer has sent; a head that does not end within them is
//!   [`HeadError::TooLarge`] (431), never buffered further.
//! - A returned head is HTTP/1.0 or HTTP/1.1, has a UTF-8 target, any number of headers
//!   that fits the byte limit, and one unambiguous `Content-Length` (0 when absent); bytes after `head_len` (a
//!   body or a pipelined request) are not looked at.
//! - HTTP/1.0 never keeps the connection alive (the contract closes after answering it), whatever
//!   its `Connection` header says.

use std::str;

/// Longest request head, request line through the empty line, that pnsd accepts. The contract
/// (section 3) answers 431 to anything longer; 8 KiB is also nginx's default
/// `large_client_header_buffers` size, so clients that work behind nginx work here.
pub const MAX_HEAD: usize = 8192;

/// Header slots tried first, on the stack. Browsers send about 15 headers and proxies add a few,
/// so 64 covers real traffic while keeping the slot array (16 bytes of `&str` plus 16 of `&[u8]`
/// each, 2 KiB total) on the stack. A head with more is parsed again with `MAX_HEADERS_ANY`
/// slots on the heap: the contract limits the head's bytes, not its header count.
pub const MAX_HEADERS: usize = 64;

/// Enough slots for any head within `MAX_HEAD`: the shortest header line is 3 bytes (`a:\n`).
pub const MAX_HEADERS_ANY: usize = MAX_HEAD / 3 + 1;

/// Request methods pnsd routes on. Methods are case-sensitive (RFC 9110 §9.1), so `get` is
/// [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD` (answered 405 on known paths).
    Head,
    /// `OPTIONS` (the CORS preflight).
    Options,
    /// Any other syntactically valid method token.
    Other,
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// What pnsd needs from one request head, owned so it outlives the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// Target path without query or fragment. Absolute-form `http://h/p?q` gives `/p` (and `/`
    /// when the path is empty); `*` stays `*`; authority-form is kept as sent (it routes to 404).
    pub path: String,
    /// Raw text after the first `?`, without it, still form-encoded; `""` when there is none.
    pub query: String,
    /// The request is HTTP/1.0.
    pub http10: bool,
    /// The connection may serve another request after this one: false for HTTP/1.0, and false
    /// when any `Connection` header lists the token `close` (case-insensitive).
    pub keep_alive: bool,
    /// The declared body length; 0 when the header is absent.
    pub content_length: u64,
    /// A `Transfer-Encoding` header is present (whatever its value).
    pub transfer_encoding: bool,
    /// The `Authorization` value, surrounding whitespace removed.
    pub authorization: Option<String>,
    /// The `If-None-Match` value; several headers are joined with `", "` as RFC 9110 §5.3 allows
    /// for list fields (which [`etag_cursor`] then rejects as a list).
    pub if_none_match: Option<String>,
    /// The `Origin` value (the first one), for the CORS match; `None` (no allocation) when
    /// absent.
    pub origin: Option<String>,
    /// `Accept` lists `text/event-stream`: the request asks for a Server-Sent Events stream.
    pub event_stream: bool,
    /// The `Last-Event-ID` value (an SSE reconnect's cursor).
    pub last_event_id: Option<String>,
    /// Bytes of the buffer taken by the head, leading empty lines included; the body or next
    /// pipelined request starts here.
    pub head_len: usize,
}

/// Why a head cannot be served. Both close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400: bad syntax, an unsupported version, a bad or conflicting `Content-Length`, a
    /// non-UTF-8 target, a repeated `Authorization`, or a non-UTF-8 `Authorization` or
    /// `If-None-Match`.
    Malformed,
    /// 431: more than [`MAX_HEAD`] bytes.
    TooLarge,
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: incomplete and still within [`MAX_HEAD`]; read more and call again. Err(TooLarge):
/// the head is, or must become, longer than [`MAX_HEAD`] bytes (incomplete with
/// `buf.len() >= MAX_HEAD`, or complete with `head_len > MAX_HEAD`). Err(Malformed): anything httparse rejects, a version other than
/// HTTP/1.0 or 1.1, a bad or conflicting Content-Length, non-UTF-8 target.
///
/// Leading empty lines before the request line are skipped (RFC 9112 §2.2) and counted in
/// `head_len`. Obsolete line folding is rejected, as RFC 9112 §5.2 allows for requests.
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    // Parsing only the first MAX_HEAD bytes bounds the work and makes "complete" imply
    // head_len <= MAX_HEAD; a valid head cut short is Partial, never an error, in httparse.
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(window) {
        Err(httparse::Error::TooManyHeaders) => {
            let mut many = vec![httparse::EMPTY_HEADER; MAX_HEADERS_ANY];
            let mut req = httparse::Request::new(&mut many);
            let status = req.parse(window);
            head_from(req, status, buf.len())
        }
        status => head_from(req, status, buf.len()),
    }
}

/// The head of a parse attempt (see `parse_head`).
fn head_from(
    req: httparse::Request<'_, '_>,
    status: httparse::Result<usize>,
    buffered: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let head_len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buffered >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    let http10 = match version {
        0 => true,
        1 => false,
        _ => return Err(HeadError::Malformed),
    };

    let mut close = false;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut authorization: Option<String> = None;
    let mut if_none_match: Option<String> = None;
    let mut origin: Option<String> = None;
    let mut event_stream = false;
    let mut last_event_id: Option<String> = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            close |= lists_token(h.value, b"close");
        } else if name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|&b| b == b',') {
                let n = parse_length(trim(part)).ok_or(HeadError::Malformed)?;
                if content_length.is_some_and(|seen| seen != n) {
                    return Err(HeadError::Malformed);
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                // Two credentials are ambiguous; a proxy may have honoured the other one.
                return Err(HeadError::Malformed);
            }
            authorization = Some(utf8(h.value)?.to_owned());
        } else if name.eq_ignore_ascii_case("origin") {
            if origin.is_none() {
                origin = Some(utf8(h.value)?.to_owned());
            }
        } else if name.eq_ignore_ascii_case("accept") {
            event_stream |= h
                .value
                .split(|&b| b == b',')
                .any(|t| media_type(t).eq_ignore_ascii_case(b"text/event-stream"));
        } else if name.eq_ignore_ascii_case("last-event-id") {
            if last_event_id.is_none() {
                last_event_id = Some(utf8(trim(h.value))?.to_owned());
            }
        } else if name.eq_ignore_ascii_case("if-none-match") {
            let value = utf8(h.value)?;
            match &mut if_none_match {
                Some(joined) => {
                    joined.push_str(", ");
                    joined.push_str(value);
                }
                None => if_none_match = Some(value.to_owned()),
            }
        }
    }

    let (path, query) = split_target(target);
    Ok(Some(RequestHead {
        method: Method::from_token(method),
        path: path.to_owned(),
        query: query.to_owned(),
        http10,
        keep_alive: !http10 && !close,
        content_length: content_length.unwrap_or(0),
        transfer_encoding,
        authorization,
        if_none_match,
        origin,
        event_stream,
        last_event_id,
        head_len,
    }))
}

/// Cheap pre-check before calling [`parse_head`] on a growing buffer: true when `buf` may hold a
/// complete head, i.e. contains `"\n\r\n"` or `"\n\n"` at or after byte `from.saturating_sub(3)`.
///
/// `from` is the buffer length at the previous check, so each byte is scanned about once and a
/// client dribbling one byte at a time does not cost a full parse per byte. A true answer is only
/// a hint (leading empty lines also match); `parse_head` decides. A false answer is not final
/// either: a head that never ends must still be refused, so the caller also calls `parse_head`
/// once the buffer holds [`MAX_HEAD`] bytes (which then answers [`HeadError::TooLarge`]).
pub fn may_be_complete(buf: &[u8], from: usize) -> bool {
    let mut at = from.saturating_sub(3);
    while let Some(lf) = buf
        .get(at..)
        .and_then(|t| t.iter().position(|&b| b == b'\n'))
    {
        let lf = at + lf;
        match buf.get(lf + 1) {
            Some(b'\n') => return true,
            Some(b'\r') if buf.get(lf + 2) == Some(&b'\n') => return true,
            _ => at = lf + 1,
        }
    }
    false
}

/// The cursor named by an If-None-Match value: `"CURSOR"` or `W/"CURSOR"` gives `CURSOR`;
/// anything else (no quotes, `*`, a list, an empty tag, characters RFC 9110 §8.8.3 does not
/// allow in an entity-tag) is None, which the caller treats like an absent cursor.
pub fn etag_cursor(value: &str) -> Option<&str> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let tag = value.strip_prefix("W/").unwrap_or(value);
    let inner = tag.strip_prefix('"')?.strip_suffix('"')?;
    let etagc = |b: u8| b == 0x21 || (0x23..=0x7e).contains(&b);
    (!inner.is_empty() && inner.bytes().all(etagc)).then_some(inner)
}

/// Splits a request target into (path, query). Fragments are dropped (clients must not send
/// them, RFC 9112 §3.2, but some do).
fn split_target(target: &str) -> (&str, &str) {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match absolute_form_path(path) {
        Some("") => ("/", query),
        Some(p) => (p, query),
        None => (path, query),
    }
}

/// For an absolute-form target (`scheme://authority/path`, query already removed) the path part,
/// which may be empty; None for origin-form, `*` and authority-form.
fn absolute_form_path(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return None;
    }
    let (scheme, rest) = target.split_once("://")?;
    let mut chars = scheme.bytes();
    let first_ok = chars.next().is_some_and(|b| b.is_ascii_alphabetic());
    let scheme_ok =
        first_ok && chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return None;
    }
    Some(rest.find('/').map_or("", |i| &rest[i..]))
}

/// True when the comma-separated token list `value` contains `token` (ASCII case-insensitive).
fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// A Content-Length element: 1 or more ASCII digits that fit in u64.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// The media type of one `Accept` element, without parameters (`;q=...`) or spaces.
fn media_type(element: &[u8]) -> &[u8] {
    let end = element
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(element.len());
    trim(&element[..end])
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn utf8(value: &[u8]) -> Result<&str, HeadError> {
    str::from_utf8(value).map_err(|_| HeadError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: &[u8] = b"GET /pns/poll?channel=user%3A42&cursor=abc&hold=30 HTTP/1.1\r\n\
Host: push.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0\r\n\
Accept: application/json\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig\r\n\
If-None-Match: W/\"c1\"\r\n\
Origin: https://app.example.com\r\n\
Connection: keep-alive\r\n\
\r\n";

    fn head(buf: &[u8]) -> RequestHead {
        match parse_head(buf) {
            Ok(Some(h)) => h,
            other => panic!("{:?} for {:?}", other, String::from_utf8_lossy(buf)),
        }
    }

    fn defaults(path: &str, head_len: usize) -> RequestHead {
        RequestHead {
            method: Method::Get,
            path: path.to_owned(),
            query: String::new(),
            http10: false,
            keep_alive: true,
            content_length: 0,
            transfer_encoding: false,
            authorization: None,
            if_none_match: None,
            origin: None,
            event_stream: false,
            last_event_id: None,
            head_len,
        }
    }

    /// `ok!(buf => |h| { field checks })`: `buf` parses completely and every check holds.
    macro_rules! ok {
        ($buf:expr => |$h:ident| $body:block) => {{
            let buf: &[u8] = $buf;
            let $h = head(buf);
            $body
        }};
    }

    /// `err!(buf, Error)`: `buf` fails with that error.
    macro_rules! err {
        ($buf:expr, $e:ident) => {{
            let buf: &[u8] = $buf;
            assert_eq!(
                parse_head(buf),
                Err(HeadError::$e),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }};
    }

    #[test]
    fn typical_poll() {
        ok!(POLL => |h| {
            assert_eq!(h, RequestHead {
                path: "/pns/poll".into(),
                query: "channel=user%3A42&cursor=abc&hold=30".into(),
                authorization: Some("Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig".into()),
                if_none_match: Some("W/\"c1\"".into()),
                origin: Some("https://app.example.com".into()),
                ..defaults("", POLL.len())
            });
        });
    }

    #[test]
    fn event_stream_and_last_event_id() {
        ok!(b"GET /p HTTP/1.1\r\nAccept: text/html, TEXT/Event-Stream;q=0.9\r\nLast-Event-ID:  c1 \r\n\r\n" => |h| {
            assert!(h.event_stream);
            assert_eq!(h.last_event_id.as_deref(), Some("c1"));
            assert_eq!(h.origin, None);
        });
        ok!(b"GET /p HTTP/1.1\r\nAccept: application/json\r\nOrigin: https://a\r\nOrigin: https://b\r\n\r\n" => |h| {
            assert!(!h.event_stream);
            assert_eq!(h.origin.as_deref(), Some("https://a"));
        });
    }

    #[test]
    fn minimal_requests() {
        let cases: &[(&[u8], RequestHead)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", defaults("/", 18)),
            (b"GET / HTTP/1.1\n\n", defaults("/", 16)),
            (b"GET /a HTTP/1.1\r\nHost: x\n\n", defaults("/a", 26)),
            (
                b"GET / HTTP/1.0\r\n\r\n",
                RequestHead {
                    http10: true,
                    keep_alive: false,
                    ..defaults("/", 18)
                },
            ),
            (
                b"HEAD /pns/poll HTTP/1.1\r\n\r\n",
                RequestHead {
                    method: Method::Head,
                    ..defaults("/pns/poll", 27)
                },
            ),
            (
                b"OPTIONS /pns/poll HTTP/1.1\r\n\r\n",
                RequestHead {
                    method: Method::Options,
                    ..defaults("/pns/poll", 30)
                },
            ),
            (
                b"POST /pns/poll HTTP/1.1\r\n\r\n",
                RequestHead {
                    method: Method::Other,
                    ..defaults("/pns/poll", 27)
                },
            ),
            (
                b"get / HTTP/1.1\r\n\r\n",
                RequestHead {
                    method: Method::Other,
                    ..defaults("/", 18)
                },
            ),
            (
                b"Get / HTTP/1.1\r\n\r\n",
                RequestHead {
                    method: Method::Other,
                    ..defaults("/", 18)
                },
            ),
            (
                b"BREW / HTTP/1.1\r\n\r\n",
                RequestHead {
                    method: Method::Other,
                    ..defaults("/", 19)
                },
            ),
        ];
        for (buf, want) in cases {
            assert_eq!(&head(buf), want, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn targets() {
        let cases: &[(&str, &str, &str)] = &[
            // (target, path, query)
            ("/pns/poll", "/pns/poll", ""),
            ("/pns/poll?", "/pns/poll", ""),
            ("/pns/poll?a=1", "/pns/poll", "a=1"),
            ("/pns/poll?a=1?b=2", "/pns/poll", "a=1?b=2"),
            ("/pns/poll?a=%20+b", "/pns/poll", "a=%20+b"),
            ("/p?q#frag", "/p", "q"),
            ("/p#frag?notq", "/p", ""),
            ("/%70ns/poll", "/%70ns/poll", ""),
            ("*", "*", ""),
            ("http://h/p?q", "/p", "q"),
            ("http://h/p", "/p", ""),
            ("HTTP://H:8080/pns/poll?x=1", "/pns/poll", "x=1"),
            ("https://user@h:1/a/b", "/a/b", ""),
            ("http://h", "/", ""),
            ("http://h?q=1", "/", "q=1"),
            ("http://h/", "/", ""),
            ("h:443", "h:443", ""),
            ("1http://h/p", "1http://h/p", ""),
            ("/a://b", "/a://b", ""),
        ];
        for (target, path, query) in cases {
            let buf = format!("GET {target} HTTP/1.1\r\n\r\n");
            let h = head(buf.as_bytes());
            assert_eq!(
                (h.path.as_str(), h.query.as_str()),
                (*path, *query),
                "{target}"
            );
        }
    }

    #[test]
    fn keep_alive_rules() {
        let cases: &[(&str, &str, bool)] = &[
            // (version, extra header lines, keep_alive)
            ("1.1", "", true),
            ("1.1", "Connection: keep-alive\r\n", true),
            ("1.1", "Connection: close\r\n", false),
            ("1.1", "Connection: Close\r\n", false),
            ("1.1", "connection: CLOSE\r\n", false),
            ("1.1", "Connection: Keep-Alive, close\r\n", false),
            ("1.1", "Connection: close,Keep-Alive\r\n", false),
            ("1.1", "Connection: upgrade ,  close \r\n", false),
            (
                "1.1",
                "Connection: keep-alive\r\nConnection: close\r\n",
                false,
            ),
            ("1.1", "Connection: closed\r\n", true),
            ("1.1", "Connection: close-ish, x\r\n", true),
            ("1.1", "Connection:\r\n", true),
            ("1.1", "X-Connection: close\r\n", true),
            ("1.1", "Proxy-Connection: close\r\n", true),
            ("1.0", "", false),
            ("1.0", "Connection: keep-alive\r\n", false),
            ("1.0", "Connection: close\r\n", false),
        ];
        for (version, extra, keep) in cases {
            let buf = format!("GET / HTTP/{version}\r\n{extra}\r\n");
            let h = head(buf.as_bytes());
            assert_eq!(h.keep_alive, *keep, "{buf:?}");
            assert_eq!(h.http10, *version == "1.0", "{buf:?}");
        }
    }

    /// Ok((content_length, transfer_encoding)) or the error.
    type Framing = Result<(u64, bool), HeadError>;

    #[test]
    fn body_framing() {
        let cases: &[(&str, Framing)] = &[
            // (extra header lines, Ok((content_length, transfer_encoding)) or the error)
            ("", Ok((0, false))),
            ("Content-Length: 0\r\n", Ok((0, false))),
            ("Content-Length: 5\r\n", Ok((5, false))),
            ("content-length:5\r\n", Ok((5, false))),
            ("CONTENT-LENGTH:   42   \r\n", Ok((42, false))),
            ("Content-Length: 007\r\n", Ok((7, false))),
            (
                "Content-Length: 18446744073709551615\r\n",
                Ok((u64::MAX, false)),
            ),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", Ok((5, false))),
            ("Content-Length: 5, 5\r\n", Ok((5, false))),
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                Err(HeadError::Malformed),
            ),
            ("Content-Length: 5, 6\r\n", Err(HeadError::Malformed)),
            (
                "Content-Length: 0\r\ncontent-length: 1\r\n",
                Err(HeadError::Malformed),
            ),
            (
                "Content-Length: 18446744073709551616\r\n",
                Err(HeadError::Malformed),
            ),
            ("Content-Length:\r\n", Err(HeadError::Malformed)),
            ("Content-Length: -1\r\n", Err(HeadError::Malformed)),
            ("Content-Length: +1\r\n", Err(HeadError::Malformed)),
            ("Content-Length: 1.0\r\n", Err(HeadError::Malformed)),
            ("Content-Length: 0x10\r\n", Err(HeadError::Malformed)),
            ("Content-Length: 1 2\r\n", Err(HeadError::Malformed)),
            ("Content-Length: 5,\r\n", Err(HeadError::Malformed)),
            ("Transfer-Encoding: chunked\r\n", Ok((0, true))),
            ("transfer-encoding: identity\r\n", Ok((0, true))),
            ("Transfer-Encoding:\r\n", Ok((0, true))),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                Ok((3, true)),
            ),
            ("Content-Lengths: 5\r\n", Ok((0, false))),
        ];
        for (extra, want) in cases {
            let buf = format!("GET / HTTP/1.1\r\n{extra}\r\n");
            let got = parse_head(buf.as_bytes())
                .map(|h| h.map(|h| (h.content_length, h.transfer_encoding)));
            assert_eq!(got, want.map(Some), "{buf:?}");
        }
    }

    /// Ok((authorization, if_none_match)) or the error.
    type Credentials = Result<(Option<&'static str>, Option<&'static str>), HeadError>;

    #[test]
    fn credentials_and_etag() {
        let cases: &[(&str, Credentials)] = &[
            // (extra header lines, Ok((authorization, if_none_match)) or the error)
            ("", Ok((None, None))),
            ("Authorization: Bearer t\r\n", Ok((Some("Bearer t"), None))),
            ("authorization:Bearer t  \r\n", Ok((Some("Bearer t"), None))),
            (
                "AUTHORIZATION: \t Basic dTpw\r\n",
                Ok((Some("Basic dTpw"), None)),
            ),
            ("Authorization:\r\n", Ok((Some(""), None))),
            (
                "Authorization: a\r\nAuthorization: a\r\n",
                Err(HeadError::Malformed),
            ),
            (
                "Authorization: Bearer \u{e9}\r\n",
                Ok((Some("Bearer \u{e9}"), None)),
            ),
            ("If-None-Match: \"c\"\r\n", Ok((None, Some("\"c\"")))),
            ("if-none-match: W/\"c\"\r\n", Ok((None, Some("W/\"c\"")))),
            (
                "If-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n",
                Ok((None, Some("\"a\", \"b\""))),
            ),
        ];
        for (extra, want) in cases {
            let buf = format!("GET / HTTP/1.1\r\n{extra}\r\n");
            let got =
                parse_head(buf.as_bytes()).map(|h| h.map(|h| (h.authorization, h.if_none_match)));
            let owned = |s: Option<&str>| s.map(str::to_owned);
            let want = want.map(|(a, i)| Some((owned(a), owned(i))));
            assert_eq!(got, want, "{buf:?}");
        }
        // Non-UTF-8 (obs-text) is tolerated in headers pnsd ignores, rejected in those it reads.
        ok!(b"GET / HTTP/1.1\r\nUser-Agent: caf\xe9\r\n\r\n" => |h| {
            assert_eq!(h.path, "/");
        });
        err!(
            b"GET / HTTP/1.1\r\nAuthorization: Bearer \xff\r\n\r\n",
            Malformed
        );
        err!(
            b"GET / HTTP/1.1\r\nIf-None-Match: \"\xff\"\r\n\r\n",
            Malformed
        );
    }

    #[test]
    fn malformed() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET /\xc3 HTTP/1.1\r\n\r\n",
            b"GET /\0 HTTP/1.1\r\n\r\n",
            b"\0GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo\0st: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\n: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: 1\r\n\r\r\n",
            b"\r\rGET / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"\xff\xfe\xfd\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"{\"channel\":\"a\"}\n\n",
        ];
        for buf in cases {
            err!(buf, Malformed);
        }
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        // httparse skips CRLF and bare LF before the request line (RFC 9112 §2.2 "SHOULD ignore at
        // least one empty line"); they count in head_len.
        ok!(b"\r\nGET / HTTP/1.1\r\n\r\n" => |h| { assert_eq!(h, defaults("/", 20)); });
        ok!(b"\n\r\n\nGET / HTTP/1.1\r\n\r\n" => |h| { assert_eq!(h, defaults("/", 22)); });
        assert_eq!(parse_head(b"\r\n\r\n\r\n"), Ok(None));
        // An endless run of empty lines is cut off at MAX_HEAD like any other long head.
        assert_eq!(
            parse_head(&b"\r\n".repeat(MAX_HEAD / 2)),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn incomplete_is_none() {
        let cases: &[&[u8]] = &[
            b"",
            b"G",
            b"GET",
            b"GET ",
            b"GET /pns/poll",
            b"GET / HTTP/1.",
            b"GET / HTTP/1.1",
            b"GET / HTTP/1.1\r",
            b"GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: a",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"\r\n",
        ];
        for buf in cases {
            assert_eq!(
                parse_head(buf),
                Ok(None),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    /// Feeds every prefix of `head` + `tail` and checks the answer is `None` until the whole head
    /// is present, then exactly the one-read answer.
    fn check_splits(head: &[u8], tail: &[u8]) {
        let head_len = head.len();
        let full_vec = [head, tail].concat();
        let full = full_vec.as_slice();
        let whole = parse_head(full);
        let Ok(Some(want)) = whole.clone() else {
            panic!("{:?} for {:?}", whole, String::from_utf8_lossy(full));
        };
        assert_eq!(want.head_len, head_len);
        for n in 0..=full.len() {
            let got = parse_head(&full[..n]);
            if n < head_len {
                assert_eq!(
                    got,
                    Ok(None),
                    "prefix {n} of {:?}",
                    String::from_utf8_lossy(full)
                );
            } else {
                assert_eq!(
                    got,
                    whole,
                    "prefix {n} of {:?}",
                    String::from_utf8_lossy(full)
                );
            }
        }
    }

    #[test]
    fn every_split_point_parses_the_same() {
        let cases: &[(&[u8], &[u8])] = &[
            // (head, bytes after it)
            (POLL, b""),
            (POLL, POLL),
            (b"GET / HTTP/1.1\r\n\r\n", b""),
            (b"GET / HTTP/1.0\n\n", b""),
            (
                b"\r\n\nOPTIONS * HTTP/1.1\r\nConnection: close\r\n\r\n",
                b"",
            ),
            (
                b"GET /pns/poll?channel=a HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /pns/health",
            ),
            (b"GET / HTTP/1.1\r\nContent-Length: 4\r\n\r\n", b"body"),
            (
                b"GET http://h:1/pns/poll?channel=a&hold=0 HTTP/1.1\nA:\nB: 1\r\n\n",
                b"\r\n",
            ),
        ];
        for (head, tail) in cases {
            check_splits(head, tail);
        }
        // The same split check on a head that uses every header slot.
        let mut max = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            max.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        max.extend_from_slice(b"\r\n");
        check_splits(&max, b"");
    }

    #[test]
    fn errors_do_not_depend_on_splits() {
        // Once a prefix is an error, every longer prefix gives the same error.
        let cases: &[&[u8]] = &[
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        ];
        for full in cases {
            let want = parse_head(full);
            assert_eq!(want, Err(HeadError::Malformed));
            let mut seen_error = false;
            for n in 0..=full.len() {
                let got = parse_head(&full[..n]);
                seen_error |= got.is_err();
                if seen_error {
                    assert_eq!(
                        got,
                        want,
                        "prefix {n} of {:?}",
                        String::from_utf8_lossy(full)
                    );
                } else {
                    assert_eq!(got, Ok(None), "prefix {n}");
                }
            }
        }
    }

    #[test]
    fn mutated_heads_are_split_independent() {
        // A deterministic mini-fuzz: overwrite 1-3 bytes of real requests with bytes that matter
        // to the grammar, then check that no prefix panics and that the answers over growing
        // prefixes are None... then a single final answer that equals the whole-buffer answer.
        const INTERESTING: &[u8] = b"\r\n: \t\0\x7f\xff\xc3,\"?#/%W";
        let seeds: [&[u8]; 3] = [
            POLL,
            b"GET /pns/poll?channel=a HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            b"\r\nOPTIONS http://h/pns/poll HTTP/1.0\nIf-None-Match: W/\"x\"\n\n",
        ];
        let mut rng = crate::xorshift::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move |bound: usize| rng.below(bound as u64) as usize;
        for round in 0..600 {
            let mut buf = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + next(3) {
                let at = next(buf.len());
                buf[at] = INTERESTING[next(INTERESTING.len())];
            }
            let whole = parse_head(&buf);
            let mut settled = false;
            for n in 0..=buf.len() {
                let got = parse_head(&buf[..n]);
                if settled || got != Ok(None) {
                    settled = true;
                    assert_eq!(
                        got,
                        whole,
                        "prefix {n} of {:?}",
                        String::from_utf8_lossy(&buf)
                    );
                }
                if let Ok(Some(h)) = &got {
                    assert!(h.head_len <= n && h.keep_alive <= !h.http10);
                }
            }
            let _ = may_be_complete(&buf, next(buf.len() + 5));
        }
    }

    /// A head of exactly `len` bytes: request line, one padded header, empty line.
    fn head_of_len(len: usize) -> Vec<u8> {
        let fixed = b"GET /pns/poll HTTP/1.1\r\nX-Pad: \r\n\r\n".len();
        let mut buf = b"GET /pns/poll HTTP/1.1\r\nX-Pad: ".to_vec();
        buf.resize(len - (fixed - buf.len()), b'p');
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(buf.len(), len);
        buf
    }

    #[test]
    fn max_head_boundary() {
        let exact = head_of_len(MAX_HEAD);
        ok!(&exact => |h| { assert_eq!(h.head_len, MAX_HEAD); });
        // Followed by pipelined bytes, still accepted.
        let mut more = exact.clone();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        ok!(&more => |h| { assert_eq!(h.head_len, MAX_HEAD); });
        // Each prefix of the 8192-byte head is still None: the incomplete cut-off is at >= 8192.
        assert_eq!(parse_head(&exact[..MAX_HEAD - 1]), Ok(None));

        let over = head_of_len(MAX_HEAD + 1);
        err!(&over, TooLarge);
        // 8192 bytes of a head that needs 8193 are already known to be too large.
        err!(&over[..MAX_HEAD], TooLarge);
        assert_eq!(parse_head(&over[..MAX_HEAD - 1]), Ok(None));
        err!(&head_of_len(MAX_HEAD + 2), TooLarge);
        err!(&head_of_len(3 * MAX_HEAD), TooLarge);

        // A long request line counts the same as long headers.
        let mut line = b"GET /".to_vec();
        line.resize(MAX_HEAD - " HTTP/1.1\r\n\r\n".len(), b'a');
        line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        ok!(&line => |h| { assert_eq!(h.path.len(), MAX_HEAD - 17); });
        line.insert(5, b'a');
        err!(&line, TooLarge);

        // Garbage that never ends a line is cut off at MAX_HEAD too (as TooLarge, or as
        // Malformed if httparse sees a bad byte first).
        err!(&[b'a'; MAX_HEAD], TooLarge);
        assert_eq!(parse_head(&[b'a'; MAX_HEAD - 1]), Ok(None));
    }

    #[test]
    fn header_count_limit() {
        let with = |n: usize| {
            let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            buf.extend_from_slice(b"\r\n");
            buf
        };
        ok!(&with(MAX_HEADERS) => |h| { assert_eq!(h.path, "/"); });
        // More than the stack slots: parsed again on the heap; only bytes count (contract).
        ok!(&with(MAX_HEADERS + 1) => |h| { assert_eq!(h.path, "/"); });
        ok!(&with(600) => |h| { assert_eq!(h.path, "/"); });
        let many = with(MAX_HEADERS + 1);
        assert_eq!(parse_head(&many[..many.len() - 2]), Ok(None));
        // The most headers that fit in MAX_HEAD bytes.
        let mut tiny = b"GET / HTTP/1.1\n".to_vec();
        while tiny.len() + 4 <= MAX_HEAD {
            tiny.extend_from_slice(b"a:\n");
        }
        tiny.push(b'\n');
        ok!(&tiny => |h| { assert_eq!(h.head_len, tiny.len()); });
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let spellings = [
            "connection: close\r\ncontent-length: 3\r\ntransfer-encoding: x\r\n",
            "CONNECTION: close\r\nCONTENT-LENGTH: 3\r\nTRANSFER-ENCODING: x\r\n",
            "cOnNeCtIoN: close\r\nContent-length: 3\r\nTransfer-encoding: x\r\n",
        ];
        for extra in spellings {
            let buf = format!(
                "GET / HTTP/1.1\r\nAUTHORIZATION: a\r\nif-NONE-match: \"b\"\r\n{extra}\r\n"
            );
            let h = head(buf.as_bytes());
            assert!(!h.keep_alive, "{buf:?}");
            assert_eq!(h.content_length, 3);
            assert!(h.transfer_encoding);
            assert_eq!(h.authorization.as_deref(), Some("a"));
            assert_eq!(h.if_none_match.as_deref(), Some("\"b\""));
        }
    }

    #[test]
    fn may_be_complete_table() {
        let cases: &[(&[u8], usize, bool)] = &[
            // (buffer, from, answer)
            (b"", 0, false),
            (b"GET / HTTP/1.1\r\n", 0, false),
            (b"GET / HTTP/1.1\r\n\r\n", 0, true),
            (b"GET / HTTP/1.1\n\n", 0, true),
            (b"GET / HTTP/1.1\r\n\r", 0, false),
            (b"GET / HTTP/1.1\r\r\n", 0, false),
            // The terminator straddles `from`: from - 3 still sees it.
            (b"GET / HTTP/1.1\r\n\r\n", 15, true),
            (b"GET / HTTP/1.1\r\n\r\n", 16, true),
            (b"GET / HTTP/1.1\r\n\r\n", 17, true),
            (b"GET / HTTP/1.1\r\n\r\n", 18, true),
            (b"GET / HTTP/1.1\n\n", 16, true),
            // Entirely before from - 3: already seen by an earlier call.
            (b"GET / HTTP/1.1\r\n\r\nXYZW", 22, false),
            (b"GET / HTTP/1.1\r\n\r\nXYZ", 21, false),
            (b"GET / HTTP/1.1\r\n\r\nXYZ", 18, true),
            // `from` past the end is harmless.
            (b"ab\n\n", 100, false),
            (b"\n\n", 1, true),
        ];
        for (buf, from, want) in cases {
            assert_eq!(
                may_be_complete(buf, *from),
                *want,
                "{:?} from {from}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn may_be_complete_never_misses_a_head() {
        // Dribbling the bytes one at a time, with `from` = the length at the previous check,
        // the pre-check is true at the moment the head becomes complete.
        for full in [
            POLL,
            b"GET / HTTP/1.1\n\n".as_slice(),
            b"\r\n\r\nGET / HTTP/1.0\r\n\n",
        ] {
            let mut from = 0;
            let mut done = None;
            for n in 1..=full.len() {
                if may_be_complete(&full[..n], from) {
                    if let Ok(Some(h)) = parse_head(&full[..n]) {
                        done = Some((n, h.head_len));
                        break;
                    }
                }
                from = n;
            }
            assert_eq!(done, Some((full.len(), full.len())));
        }
    }

    #[test]
    fn etag_cursor_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("\"abc\"", Some("abc")),
            ("W/\"abc\"", Some("abc")),
            ("  \"abc\" ", Some("abc")),
            ("\"1.AAAA-bbbb_cc:dd\"", Some("1.AAAA-bbbb_cc:dd")),
            ("abc", None),
            ("*", None),
            ("\"\"", None),
            ("W/\"\"", None),
            ("\"abc", None),
            ("abc\"", None),
            ("\"", None),
            ("w/\"abc\"", None),
            ("W/abc", None),
            ("W/ \"abc\"", None),
            ("\"a\", \"b\"", None),
            ("\"a\",\"b\"", None),
            ("\"a b\"", None),
            ("\"a\tb\"", None),
            ("\"caf\u{e9}\"", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(etag_cursor(value), *want, "{value:?}");
        }
    }
}
