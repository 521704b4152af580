//! HTTP/1.1 client framing with no I/O: request writing and response parsing.
//!
//! Invariants: `parse_response` looks only at the bytes it is given; it reports `Partial` until
//! one whole response (head and body) is present, and on `Complete` says exactly how many bytes
//! that response occupied, so bytes of a following response are never consumed. Bodies are
//! returned de-chunked. A body without `Content-Length` or chunking runs until the server closes;
//! such a response is complete only when the caller says the stream has ended (`eof`).
//! Interim `1xx` heads are skipped.

/// Headers a response may carry: nginx sends about 10, pnsd about 6; 32 leaves room for proxies.
const MAX_HEADERS: usize = 32;
/// Interim (1xx) heads skipped before a final response: servers send at most one in practice.
const MAX_INTERIM: usize = 4;
/// A chunk-size line longer than this is malformed (16 hex digits plus extensions is plenty).
const MAX_CHUNK_LINE: usize = 1024;

/// One complete HTTP response, reduced to what the load generator uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `ETag` value with quotes as sent.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The server will close the connection after this response.
    pub close: bool,
    pub body: Vec<u8>,
}

/// Result of looking for one response at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A whole response and the number of buffer bytes it occupied.
    Complete(Response, usize),
}

/// A response that cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    Head(httparse::Error),
    ContentLength,
    Chunk,
    /// The stream ended inside a response.
    Truncated,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Head(e) => write!(f, "bad response head: {e}"),
            HttpError::ContentLength => write!(f, "bad Content-Length"),
            HttpError::Chunk => write!(f, "bad chunked body"),
            HttpError::Truncated => write!(f, "connection closed inside a response"),
        }
    }
}

enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Parses one response at the start of `buf`; `eof` says no more bytes will ever follow.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Parsed, HttpError> {
    let mut start = 0;
    for _ in 0..=MAX_INTERIM {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&buf[start..]).map_err(HttpError::Head)? {
            httparse::Status::Partial => {
                return if eof && start < buf.len() {
                    Err(HttpError::Truncated)
                } else {
                    Ok(Parsed::Partial)
                }
            }
            httparse::Status::Complete(n) => n,
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            start += head_len;
            continue;
        }
        let mut out = Response {
            status,
            close: resp.version == Some(0),
            ..Response::default()
        };
        let mut length = None;
        let mut chunked = false;
        for h in resp.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                let n: usize = value.parse().map_err(|_| HttpError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::ContentLength);
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().ends_with("chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    out.close = true;
                } else if v.contains("keep-alive") {
                    out.close = false;
                }
            } else if h.name.eq_ignore_ascii_case("etag") {
                out.etag = Some(value.to_string());
            } else if h.name.eq_ignore_ascii_case("last-modified") {
                out.last_modified = Some(value.to_string());
            }
        }
        let framing = if status == 204 || status == 304 {
            Framing::Empty
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let body_start = start + head_len;
        let rest = &buf[body_start..];
        let used = match framing {
            Framing::Empty => 0,
            Framing::Length(n) => {
                if rest.len() < n {
                    return if eof {
                        Err(HttpError::Truncated)
                    } else {
                        Ok(Parsed::Partial)
                    };
                }
                out.body.extend_from_slice(&rest[..n]);
                n
            }
            Framing::Chunked => match dechunk(rest, &mut out.body)? {
                Some(n) => n,
                None if eof => return Err(HttpError::Truncated),
                None => return Ok(Parsed::Partial),
            },
            Framing::UntilClose => {
                if !eof {
                    return Ok(Parsed::Partial);
                }
                out.close = true;
                out.body.extend_from_slice(rest);
                rest.len()
            }
        };
        return Ok(Parsed::Complete(out, body_start + used));
    }
    Err(HttpError::Head(httparse::Error::Status))
}

/// Decodes a chunked body into `body`; `Ok(None)` when incomplete, else the bytes used
/// (through the trailer's empty line).
fn dechunk(buf: &[u8], body: &mut Vec<u8>) -> Result<Option<usize>, HttpError> {
    body.clear();
    let mut pos = 0;
    loop {
        let Some(eol) = find_crlf(&buf[pos..]) else {
            return if buf.len() - pos > MAX_CHUNK_LINE {
                Err(HttpError::Chunk)
            } else {
                Ok(None)
            };
        };
        let line = &buf[pos..pos + eol];
        let hex = line.split(|&b| b == b';').next().unwrap_or(&[]);
        let hex = std::str::from_utf8(hex)
            .map_err(|_| HttpError::Chunk)?
            .trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| HttpError::Chunk)?;
        pos += eol + 2;
        if size == 0 {
            // Trailer fields, each ending in CRLF, then an empty line.
            loop {
                let Some(eol) = find_crlf(&buf[pos..]) else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(HttpError::Chunk);
        }
        pos += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Appends `s` to `out` with every byte outside RFC 3986 "unreserved" percent-encoded.
pub fn percent_encode(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}
