//! The endpoints: from a parsed request head to an answer or a poll to park. No I/O.
//!
//! `handle` decides everything the contract says about one request (routing, 404/405, CORS,
//! query and cursor validation, tokens, "answer at once or park"); the connection only moves
//! bytes and the reactor timers. Answers are encoded by `answer::encode`; a parked poll's later
//! answer is built by `parked`, always from a fresh read of the store with the poll's own
//! cursor, so an answer never skips a message that was published after the poll looked.
//!
//! With `--cors-origin` every answer carries the CORS headers, errors and other paths included
//! (with a list of origins: when the request's `Origin` is one of them).
//!
//! A request with `Accept: text/event-stream` starts a Server-Sent Events stream instead
//! (`Outcome::Stream`, see `sse`): the same channels, cursor rules and first read, the hold
//! ignored.
//!
//! Channel resolution (`resolve_channels`) is the one place tokens and sessions enter: a `sid`
//! naming a registered session gives the session's channels (and, without a cursor, its
//! position); otherwise, without a secret the query names the channels; with one, the token
//! grants them. A session poll's answer moves the session's position (here when answered at
//! once, in `parked` when parked).

use crate::answer::{self, Answer};
use crate::cursor;
use crate::http::{self, Method, RequestHead};
use crate::hub::Hub;
use crate::query::{self, PollQuery, QueryError, MAX_CHANNELS};
use crate::response::{self, ApiError, Extra};
use crate::session;
use crate::sse;
use crate::store::Found;
use crate::token;

/// Contract: at most 100 messages per answer.
pub const MAX_PER_ANSWER: usize = 100;

pub const POLL_PATH: &str = "/pns/poll";
pub const HEALTH_PATH: &str = "/pns/health";

/// A poll to park.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Park {
    pub channels: Vec<String>,
    /// The cursor's seq: the poll wants messages after it.
    pub after: u64,
    /// How long to hold, in ms (> 0).
    pub hold_ms: u64,
    /// Close the connection after the answer (HTTP/1.0 or `Connection: close`).
    pub close: bool,
    /// With a token: ms from now until it expires (the poll must not outlive it).
    pub token_ms: Option<u64>,
    /// The request's CORS match (`config::Cors::matching`), kept for the later answer.
    pub cors: u8,
    /// A Server-Sent Events stream (parked again after each write, see `sse`).
    pub stream: bool,
    /// A stream's first write was a full batch: more may wait in the store at `after`.
    pub more: bool,
}

/// What to do with one request.
#[derive(Debug)]
pub enum Outcome {
    /// Send `bytes`; `delivered` when they answer a poll with at least one message;
    /// `channels`: how many channels a poll's answer is for (0 for errors and other paths).
    Respond {
        bytes: Answer,
        close: bool,
        delivered: bool,
        channels: u8,
    },
    Park(Park),
    /// Start an event stream: write `bytes` (head, `retry:`, the first events; `delivered`
    /// when there are any), then park.
    Stream {
        bytes: Answer,
        delivered: bool,
        park: Park,
    },
}

fn query_error(e: QueryError) -> ApiError {
    ApiError::new(400, e.code(), e.message())
}

fn token_error(e: token::TokenError) -> ApiError {
    ApiError::new(401, e.code(), e.message())
}

const TOO_MANY: ApiError = ApiError::new(
    400,
    "too_many_channels",
    "a poll may wait on at most 16 channels",
);

/// The answer to a parked poll whose token expired: what `token::verify` says of it.
pub fn token_expired() -> ApiError {
    token_error(token::TokenError::Expired)
}

/// What a poll is allowed to wait on.
#[derive(Debug, Default)]
pub struct Resolved {
    pub channels: Vec<String>,
    /// The token's `exp` (unix seconds) when a token was given.
    pub exp: Option<f64>,
    /// A session poll: its sid and the session's position.
    pub session: Option<(String, u64)>,
}

/// The channels a poll waits on: a registered session's (when `sid`, without an
/// `Authorization` header, names one), else the query's (checked against the token when a
/// secret is set), or, with a token and none named, every channel the token grants. Takes the
/// query's channels.
///
/// A `sid` in the session charset (`session::valid_sid`, which has no `.`, so never a token)
/// that names no live session is 401 `session_unknown` with a secret, and without one when the
/// request names no channel; without a secret, a request naming channels ignores such a sid
/// (contract v1). Any other `sid` is a token with a secret and ignored without.
pub fn resolve_channels(
    head: &RequestHead,
    q: &mut PollQuery,
    hub: &Hub,
    now_ms: u64,
) -> Result<Resolved, ApiError> {
    let session_sid = q
        .sid
        .as_deref()
        .filter(|s| head.authorization.is_none() && session::valid_sid(s));
    if let Some(sid) = session_sid {
        if let Some(v) = hub.sessions.poll(sid, now_ms) {
            return Ok(Resolved {
                channels: v.channels.iter().map(|c| c.to_string()).collect(),
                exp: None,
                session: Some((sid.to_owned(), v.position)),
            });
        }
        if hub.secret.is_some() || q.channels.is_empty() {
            return Err(response::SESSION_UNKNOWN);
        }
    }
    let Some(secret) = &hub.secret else {
        if q.channels.is_empty() {
            return Err(response::NO_CHANNEL);
        }
        return Ok(Resolved {
            channels: std::mem::take(&mut q.channels),
            ..Resolved::default()
        });
    };
    let tok = match &head.authorization {
        Some(h) => {
            let h = h.trim();
            let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
            if !scheme.eq_ignore_ascii_case("bearer") || rest.trim().is_empty() {
                return Err(response::NOT_BEARER);
            }
            rest.trim()
        }
        None => match &q.sid {
            Some(s) => s.as_str(),
            None => return Err(response::TOKEN_MISSING),
        },
    };
    let claims = token::verify(secret, tok, token::unix_now()).map_err(token_error)?;
    let exp = Some(claims.exp);
    let granted = |channels| Resolved {
        channels,
        exp,
        session: None,
    };
    if q.channels.is_empty() {
        if claims.channels.is_empty() {
            return Err(response::NO_CHANNEL);
        }
        if claims.channels.len() > MAX_CHANNELS {
            return Err(TOO_MANY);
        }
        return Ok(granted(claims.channels));
    }
    if q.channels
        .iter()
        .all(|c| claims.channels.iter().any(|g| g == c))
    {
        Ok(granted(std::mem::take(&mut q.channels)))
    } else {
        Err(response::FORBIDDEN_CHANNEL)
    }
}

/// Decides what to do with one request head (see the module documentation).
pub fn handle(head: &RequestHead, hub: &Hub, now_ms: u64) -> Outcome {
    let close = !head.keep_alive || hub.is_draining();
    let (cors_match, mismatch) = hub.config.cors.matching(head.origin.as_deref());
    if mismatch {
        hub.counters
            .cors_mismatches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let cors = hub.config.cors.header(cors_match);
    let err = |e: ApiError, cors: Option<&str>| {
        let mut bytes = Vec::with_capacity(256);
        let extra = Extra {
            close,
            cors,
            allow: match e.status {
                405 if head.path == HEALTH_PATH => Some("GET, HEAD"),
                405 => Some("GET, OPTIONS"),
                _ => None,
            },
            // RFC 9112 section 6.3: a response to HEAD has no content; a client would read a
            // body as the start of the next response on this keep-alive connection.
            no_body: head.method == Method::Head,
            ..Extra::default()
        };
        response::write_error(&mut bytes, &e, &extra);
        Outcome::Respond {
            bytes: Answer::Flat(bytes),
            close: close || e.closes(),
            delivered: false,
            channels: 0,
        }
    };
    if head.method == Method::Get && (head.content_length > 0 || head.transfer_encoding) {
        return err(response::BODY_NOT_ALLOWED, cors);
    }
    if hub.is_draining() {
        return err(response::DRAINING, cors);
    }
    match (head.path.as_str(), head.method) {
        (POLL_PATH, Method::Get) => {}
        (POLL_PATH, Method::Options) => {
            let mut bytes = Vec::with_capacity(256);
            let extra = Extra {
                close,
                cors,
                allow: Some("GET, OPTIONS"),
                preflight: true,
                ..Extra::default()
            };
            response::write(&mut bytes, 204, &extra, b"");
            return Outcome::Respond {
                bytes: Answer::Flat(bytes),
                close,
                delivered: false,
                channels: 0,
            };
        }
        (HEALTH_PATH, Method::Get | Method::Head) => {
            // Fleet mode: 503 while the link to Redis is down, so a load balancer steers new
            // clients to nodes that follow the log.
            let (status, body): (u16, &[u8]) = match hub.feed() {
                Some(f) if !f.connected() => (503, b"{\"ok\":false,\"redis\":\"down\"}"),
                _ => (200, b"{\"ok\":true}"),
            };
            let mut bytes = Vec::with_capacity(128);
            response::write(
                &mut bytes,
                status,
                &Extra {
                    close,
                    cors,
                    no_body: head.method == Method::Head,
                    ..Extra::default()
                },
                body,
            );
            return Outcome::Respond {
                bytes: Answer::Flat(bytes),
                close,
                delivered: false,
                channels: 0,
            };
        }
        (POLL_PATH, _) | (HEALTH_PATH, _) => return err(response::METHOD_NOT_ALLOWED, cors),
        _ => return err(response::NOT_FOUND, cors),
    }

    let mut q = match query::parse_poll_query(&head.query) {
        Ok(q) => q,
        Err(e) => return err(query_error(e), cors),
    };
    let Resolved {
        mut channels,
        exp,
        session,
    } = match resolve_channels(head, &mut q, hub, now_ms) {
        Ok(c) => c,
        Err(e) => return err(e, cors),
    };
    // A stream resumes from Last-Event-ID (what EventSource sends on reconnect), else the
    // cursor or last_event_id parameter. A poll's cursor parameter wins; an If-None-Match that
    // is not one entity tag is a cursor that does not parse (a list of several tags included).
    let stream = head.event_stream;
    let cursor_text = match (q.cursor.as_deref(), head.if_none_match.as_deref()) {
        _ if stream => head
            .last_event_id
            .as_deref()
            .filter(|v| !v.is_empty())
            .or(q.cursor.as_deref())
            .or(q.last_event_id.as_deref()),
        (Some(c), _) => Some(c),
        (None, Some(v)) => match http::etag_cursor(v) {
            Some(c) => Some(c),
            None => return err(response::BAD_CURSOR, cors),
        },
        (None, None) => None,
    };
    let hold_secs = q
        .hold
        .unwrap_or(hub.config.hold_secs)
        .min(hub.config.max_hold_secs);

    let store = hub.read();
    let epoch = store.epoch();
    let (after, foreign) = match cursor_text {
        // A session poll without a cursor continues where the session's last answer ended.
        None | Some("") => match &session {
            Some((_, position)) => ((*position).min(store.last_seq()), false),
            None => (store.last_seq(), false),
        },
        Some(t) => match cursor::decode(t) {
            None => return err(response::BAD_CURSOR, cors),
            Some(c) if c.epoch != epoch => (0, true),
            // Fleet mode: a cursor from a node further along the log waits here until this
            // node has read that far (the answer never moves it back).
            Some(c) if c.seq > store.last_seq() && hub.feed().is_none() => {
                return err(response::BAD_CURSOR, cors)
            }
            Some(c) => (c.seq, false),
        },
    };
    let mut found = store.read(&channels, after, now_ms, MAX_PER_ANSWER);
    drop(store);
    found.reset |= foreign;
    if stream {
        let end = found.end_seq();
        if let Some((sid, _)) = &session {
            hub.sessions.advance(sid, end, now_ms);
        }
        let bytes = sse::encode(&found, &channels, epoch, sse::head(cors));
        if let Some((sid, _)) = &session {
            channels.push(session::wait_name(sid));
        }
        let more = found.messages.len() == MAX_PER_ANSWER;
        return Outcome::Stream {
            bytes,
            delivered: !found.messages.is_empty(),
            park: Park {
                channels,
                after: end,
                hold_ms: 0,
                close: true,
                token_ms: exp.map(ms_until),
                cors: cors_match,
                stream: true,
                more,
            },
        };
    }
    if found.messages.is_empty() && !found.reset && hold_secs > 0 {
        if let Some((sid, _)) = &session {
            // The reserved channel the session's end wakes (see `session`).
            channels.push(session::wait_name(sid));
        }
        return Outcome::Park(Park {
            channels,
            after,
            hold_ms: hold_secs.saturating_mul(1000),
            close,
            token_ms: exp.map(ms_until),
            cors: cors_match,
            stream: false,
            more: false,
        });
    }
    if let Some((sid, _)) = &session {
        hub.sessions.advance(sid, found.end_seq(), now_ms);
    }
    let bytes = answer::encode(&found, &channels, epoch, close, cors);
    Outcome::Respond {
        bytes,
        close,
        delivered: !found.messages.is_empty(),
        // At most `MAX_CHANNELS` (16).
        channels: channels.len().min(usize::from(u8::MAX)) as u8,
    }
}

/// Milliseconds from now until unix time `exp` (seconds), rounded down (0 if past).
fn ms_until(exp: f64) -> u64 {
    let left = (exp - token::unix_now()) * 1000.0;
    if left > 0.0 {
        left as u64
    } else {
        0
    }
}

/// An empty answer (`c` = 0) whose cursor is `seq`: the drain's answer, which must not advance
/// a poll past anything it was not given.
pub fn empty_answer(epoch: u64, seq: u64, close: bool, cors: Option<&str>) -> Answer {
    let found = Found {
        messages: Vec::new(),
        reset: false,
        last_seq: seq,
    };
    answer::encode::<&str>(&found, &[], epoch, close, cors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Found by the `request` fuzz target (fuzz/corpus/request/regression-head-body): a HEAD
    /// was answered 405 with its JSON body on a kept connection, but a client reads no body
    /// after HEAD (RFC 9112 section 6.3) and takes those bytes for the next response.
    #[test]
    fn head_is_answered_without_a_body() {
        let hub = Hub::new(Config::default(), 10, None, 1);
        for path in [POLL_PATH, HEALTH_PATH, "/elsewhere"] {
            let raw = format!("HEAD {path} HTTP/1.1\r\nHost: h\r\n\r\n");
            let head = match http::parse_head(raw.as_bytes()) {
                Ok(Some(h)) => h,
                other => panic!("{other:?}"),
            };
            let Outcome::Respond {
                bytes: Answer::Flat(bytes),
                close,
                ..
            } = handle(&head, &hub, 0)
            else {
                panic!("HEAD parked");
            };
            let text = String::from_utf8_lossy(&bytes);
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            assert!(body.is_empty() || close, "{path}: {text:?}");
        }
    }
}
