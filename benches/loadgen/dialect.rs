//! What differs between the servers: poll requests, reading answers, publish requests, and the
//! server's own count of parked polls.
//!
//! Invariants: a `Cursor` only ever moves to what the server last answered (pnsd/jetty `cursor`,
//! nchan `Etag` + `Last-Modified`); an answer that carries no position leaves it unchanged.
//! Messages published by the load generator carry `{"seq":N}` in their data, N counting up per
//! channel, so a subscriber can check order and gaps without understanding cursors.

use crate::args::{Options, PublishUrl, Target};
use crate::http::{percent_encode, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Seconds a pnsd/jetty poll asks to be held: pnsd's default `--max-hold`, so a parked poll
/// outlives the 60 s idle window.
pub const HOLD_SECS: u32 = 120;
/// Timeout for the blocking side channels (stats, channel info): the server answers these at
/// once, so 10 s means it is stuck.
const SIDE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a subscriber stands in its channel.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    /// pnsd/jetty: the `cursor` value; nchan: the `Etag` value.
    pub token: String,
    /// nchan only: the `Last-Modified` value.
    pub last_modified: String,
}

/// What one poll answer meant.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// Messages carried (may exceed `seqs.len()` when some lack a `seq`).
    pub messages: usize,
    /// The server says messages were skipped (pnsd `"reset":true`).
    pub reset: bool,
    /// A status or body the dialect does not expect; the text says which.
    pub error: Option<String>,
}

/// Writes a long-poll request for `channel` from `cursor`.
pub fn poll_request(o: &Options, channel: &str, cursor: &Cursor, out: &mut Vec<u8>) {
    out.clear();
    match o.target {
        Target::Pnsd | Target::Jetty => {
            out.extend_from_slice(b"GET /pns/poll?channel=");
            percent_encode(channel, out);
            if !cursor.token.is_empty() {
                out.extend_from_slice(b"&cursor=");
                percent_encode(&cursor.token, out);
            }
            out.extend_from_slice(format!("&hold={HOLD_SECS} HTTP/1.1\r\nHost: ").as_bytes());
            out.extend_from_slice(o.host.as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
        }
        Target::Nchan => {
            out.extend_from_slice(b"GET /sub/");
            percent_encode(channel, out);
            out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
            out.extend_from_slice(o.host.as_bytes());
            if !cursor.last_modified.is_empty() {
                out.extend_from_slice(b"\r\nIf-Modified-Since: ");
                out.extend_from_slice(cursor.last_modified.as_bytes());
            }
            if !cursor.token.is_empty() {
                out.extend_from_slice(b"\r\nIf-None-Match: ");
                out.extend_from_slice(cursor.token.as_bytes());
            }
            out.extend_from_slice(b"\r\n\r\n");
        }
    }
}

/// A pnsd/jetty poll body, read without building a JSON tree: fields the load generator does
/// not use are skipped, and each message's `data` is borrowed as raw text.
#[derive(Deserialize)]
struct PollBody<'a> {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    reset: bool,
    #[serde(borrow, default)]
    msg: Vec<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// The one field of a load-generator message's data; other fields are ignored.
#[derive(Deserialize)]
struct SeqData {
    seq: Option<u64>,
}

/// The `seq` of one message's data (an object, or a string holding one).
fn seq_of(data: &str) -> Option<u64> {
    match data.trim_start().as_bytes().first() {
        Some(b'{') => serde_json::from_str::<SeqData>(data).ok()?.seq,
        Some(b'"') => seq_of(&serde_json::from_str::<String>(data).ok()?),
        _ => None,
    }
}

/// Reads a poll answer: advances `cursor`, appends the messages' `seq`s to `seqs`.
pub fn read_answer(
    target: Target,
    resp: &Response,
    cursor: &mut Cursor,
    seqs: &mut Vec<u64>,
) -> Answer {
    let mut a = Answer::default();
    match target {
        Target::Pnsd | Target::Jetty => {
            if resp.status != 200 {
                a.error = Some(format!("poll answered {}", resp.status));
                return a;
            }
            let body: PollBody = match serde_json::from_slice(&resp.body) {
                Ok(b) => b,
                Err(e) => {
                    a.error = Some(format!("poll body is not a poll answer: {e}"));
                    return a;
                }
            };
            if let Some(c) = body.cursor {
                cursor.token = c;
            }
            a.reset = body.reset;
            a.messages = body.msg.len();
            seqs.extend(body.msg.iter().filter_map(|m| seq_of(m.data?.get())));
        }
        Target::Nchan => match resp.status {
            200 => {
                if let Some(e) = &resp.etag {
                    cursor.token = e.clone();
                }
                if let Some(lm) = &resp.last_modified {
                    cursor.last_modified = lm.clone();
                }
                a.messages = 1;
                if let Ok(text) = std::str::from_utf8(&resp.body) {
                    seqs.extend(seq_of(text));
                }
            }
            // nchan answers an expired long-poll with 304 (or 408 in some configurations).
            304 | 408 => {}
            s => a.error = Some(format!("subscribe answered {s}")),
        },
    }
    a
}

/// A cheap look at an answer: true when it carries no message (expired hold or an error), so
/// timing loops can re-poll at once and leave the full read for later.
pub fn looks_empty(target: Target, resp: &Response) -> bool {
    const EMPTY_LIST: &[u8] = b"\"msg\":[]";
    match target {
        Target::Nchan => resp.status != 200,
        Target::Pnsd | Target::Jetty => {
            resp.status != 200 || resp.body.windows(EMPTY_LIST.len()).any(|w| w == EMPTY_LIST)
        }
    }
}

/// Writes one publish of `data` (JSON text) to `channel`.
pub fn publish_request(o: &Options, channel: &str, data: &str, out: &mut Vec<u8>) {
    let url = o.publish_url.as_ref();
    match (o.target, url) {
        (Target::Nchan, Some(u)) => {
            let mut path = format!("{}/", u.path).into_bytes();
            percent_encode(channel, &mut path);
            post(u, &path, data, out);
        }
        (Target::Jetty, Some(u)) => {
            let mut path = format!("{}?channel=", u.path).into_bytes();
            percent_encode(channel, &mut path);
            post(u, &path, data, out);
        }
        _ => {
            let line = serde_json::json!({ "channel": channel });
            let line = line.to_string();
            // Splice the data in verbatim (it is already JSON text) before the closing brace.
            out.extend_from_slice(&line.as_bytes()[..line.len() - 1]);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data.as_bytes());
            out.extend_from_slice(b"}\n");
        }
    }
}

fn post(u: &PublishUrl, path: &[u8], data: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path);
    out.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            u.host,
            data.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(data.as_bytes());
}

/// Publishes `data` to `channel` over a fresh blocking connection, outside any reactor, and
/// waits for the acknowledgement (pnsd `{"ok":true,..}`, HTTP 2xx).
pub fn publish_blocking(o: &Options, channel: &str, data: &str) -> Result<(), String> {
    let mut request = Vec::new();
    publish_request(o, channel, data, &mut request);
    match (o.target, o.publish_url.as_ref()) {
        (Target::Pnsd, _) => {
            let path = o.publish_socket.display();
            let mut s = UnixStream::connect(&o.publish_socket)
                .map_err(|e| format!("cannot connect to publish socket {path}: {e}"))?;
            s.set_read_timeout(Some(SIDE_TIMEOUT))
                .and_then(|_| s.write_all(&request))
                .map_err(|e| format!("publish on {path}: {e}"))?;
            let mut line = String::new();
            BufReader::new(s)
                .read_line(&mut line)
                .map_err(|e| format!("publish ack on {path}: {e}"))?;
            let ok = serde_json::from_str::<serde_json::Value>(&line)
                .is_ok_and(|v| v.get("ok") == Some(&serde_json::Value::Bool(true)));
            if ok {
                Ok(())
            } else {
                Err(format!("publish refused: {}", line.trim_end()))
            }
        }
        (_, Some(u)) => {
            let mut s = TcpStream::connect_timeout(&u.addr, SIDE_TIMEOUT)
                .map_err(|e| format!("publish: cannot connect to {}: {e}", u.addr))?;
            s.set_read_timeout(Some(SIDE_TIMEOUT))
                .and_then(|_| s.write_all(&request))
                .map_err(|e| format!("publish to {}: {e}", u.addr))?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s
                    .read(&mut chunk)
                    .map_err(|e| format!("publish answer from {}: {e}", u.addr))?;
                buf.extend_from_slice(&chunk[..n]);
                match crate::http::parse_response(&buf, n == 0) {
                    Ok(crate::http::Parsed::Complete(r, _)) if (200..300).contains(&r.status) => {
                        return Ok(())
                    }
                    Ok(crate::http::Parsed::Complete(r, _)) => {
                        return Err(format!("publish answered {}", r.status))
                    }
                    Ok(crate::http::Parsed::Partial) if n > 0 => {}
                    Ok(crate::http::Parsed::Partial) => {
                        return Err("publish: connection closed before the answer".into())
                    }
                    Err(e) => return Err(format!("publish answer: {e}")),
                }
            }
        }
        (_, None) => Err("--publish-url is required for this target".into()),
    }
}

/// The server's own count of parked polls on `channels` (summed), where the dialect offers one:
/// pnsd's `{"op":"stats"}` "parked" (all channels), nchan's channel info "subscribers".
pub fn server_parked(o: &Options, channels: &[String]) -> Result<Option<u64>, String> {
    match (o.target, o.publish_url.as_ref()) {
        (Target::Pnsd, _) => pnsd_stats(o).map(|v| v.get("parked").and_then(|p| p.as_u64())),
        (Target::Nchan, Some(u)) => {
            let mut total = 0;
            for ch in channels {
                total += nchan_subscribers(u, ch)?;
            }
            Ok(Some(total))
        }
        _ => Ok(None),
    }
}

/// pnsd's stats line, over a fresh publish-socket connection.
pub fn pnsd_stats(o: &Options) -> Result<serde_json::Value, String> {
    let path = o.publish_socket.display();
    let mut s = UnixStream::connect(&o.publish_socket)
        .map_err(|e| format!("cannot connect to publish socket {path}: {e}"))?;
    s.set_read_timeout(Some(SIDE_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(SIDE_TIMEOUT)))
        .and_then(|_| s.write_all(b"{\"op\":\"stats\"}\n"))
        .map_err(|e| format!("stats request on {path}: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("stats answer on {path}: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("stats answer {line:?} is not JSON: {e}"))
}

/// nchan's subscriber count of one channel (0 when the channel does not exist yet).
fn nchan_subscribers(u: &PublishUrl, channel: &str) -> Result<u64, String> {
    let mut s = TcpStream::connect_timeout(&u.addr, SIDE_TIMEOUT)
        .map_err(|e| format!("channel info: cannot connect to {}: {e}", u.addr))?;
    let mut path = format!("{}/", u.path).into_bytes();
    percent_encode(channel, &mut path);
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(&path);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            u.host
        )
        .as_bytes(),
    );
    let mut buf = Vec::new();
    s.set_read_timeout(Some(SIDE_TIMEOUT))
        .and_then(|_| s.write_all(&req))
        .and_then(|_| s.take(1 << 20).read_to_end(&mut buf))
        .map_err(|e| format!("channel info from {}: {e}", u.addr))?;
    let resp = match crate::http::parse_response(&buf, true) {
        Ok(crate::http::Parsed::Complete(r, _)) => r,
        Ok(_) => return Err("channel info: incomplete answer".into()),
        Err(e) => return Err(format!("channel info: {e}")),
    };
    if resp.status == 404 {
        return Ok(0);
    }
    parse_nchan_subscribers(&resp.body)
        .ok_or_else(|| format!("channel info ({}) has no subscriber count", resp.status))
}

/// "subscribers" from nchan's channel info, JSON or the plain-text form.
pub fn parse_nchan_subscribers(body: &[u8]) -> Option<u64> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        return v.get("subscribers")?.as_u64();
    }
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("subscribers:")?.trim().parse().ok())
}
