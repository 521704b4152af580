//! The `/pns/poll` query string: form decoding and parameter validation, free of I/O.
//!
//! Invariants of a [`PollQuery`] returned by [`parse_poll_query`]:
//! - every channel is a valid name ([`valid_channel`]), decoded, with repeats removed in
//!   first-seen order, and there are at most [`MAX_CHANNELS`] of them (possibly none: whether a
//!   channel is required depends on the token, which is the caller's business);
//! - `cursor` and `sid` are decoded and never `Some("")`;
//! - `hold` is the first `hold` parameter read as unsigned decimal, saturating at `u64::MAX`
//!   (clamping to `--max-hold` is the caller's);
//! - every key and value in the query, ignored ones included, was valid form encoding, so a
//!   mangled query is rejected as a whole rather than half-read.
//!
//! For repeated `cursor`, `hold` and `sid` the first occurrence wins and later ones are only
//! checked for encoding.

use std::borrow::Cow;

/// Most distinct channels one poll may wait on (contract section 2). Bounds the per-poll waiter
/// links a parked request holds.
pub const MAX_CHANNELS: usize = 16;

/// Longest channel name in bytes (contract section 2: names are 1-128 bytes). Long enough for a
/// prefix plus a UUID or an e-mail address, short enough to bound the memory a poll names.
pub const MAX_CHANNEL_LEN: usize = 128;

/// The parameters of one poll, decoded and validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PollQuery {
    /// Decoded, validated, repeats removed, first-seen order, at most [`MAX_CHANNELS`].
    pub channels: Vec<String>,
    /// The first `cursor` parameter, decoded; None when absent or empty.
    pub cursor: Option<String>,
    /// The first `hold` parameter, in seconds; saturates at `u64::MAX`.
    pub hold: Option<u64>,
    /// The first `sid` parameter, decoded; None when absent or empty.
    pub sid: Option<String>,
    /// The first `last_event_id` parameter (an event stream's resume point, as nchan and
    /// Mercure name it), decoded; None when absent or empty.
    pub last_event_id: Option<String>,
}

/// Why a query is refused; every variant is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` not followed by two hex digits, or a decoded key or value that is not UTF-8.
    BadEncoding,
    /// `hold` is not a run of ASCII digits.
    BadHold,
    /// A channel name is empty, longer than [`MAX_CHANNEL_LEN`] or has a byte outside
    /// `[A-Za-z0-9_.:@-]`.
    BadChannel,
    /// More than [`MAX_CHANNELS`] distinct channels.
    TooManyChannels,
}

impl QueryError {
    /// The `errorcode` of the JSON error body.
    pub fn code(self) -> &'static str {
        match self {
            QueryError::BadEncoding => "bad_query",
            QueryError::BadHold => "bad_hold",
            QueryError::BadChannel => "bad_channel",
            QueryError::TooManyChannels => "too_many_channels",
        }
    }

    /// The `message` of the JSON error body.
    pub fn message(self) -> &'static str {
        match self {
            QueryError::BadEncoding => {
                "The query string has a bad percent escape or is not UTF-8 after decoding."
            }
            QueryError::BadHold => "The hold parameter must be a non-negative decimal integer.",
            QueryError::BadChannel => {
                "A channel name must be 1 to 128 bytes of letters, digits and _ . : @ -."
            }
            QueryError::TooManyChannels => "A poll may name at most 16 distinct channels.",
        }
    }
}

/// True when `name` is 1..=128 bytes of `[A-Za-z0-9_.:@-]`.
pub fn valid_channel(name: &str) -> bool {
    (1..=MAX_CHANNEL_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// application/x-www-form-urlencoded decoding of one key or value: `+` becomes a space, `%XX`
/// (hex digits of either case) the byte XX; a `%` not followed by two hex digits, or a result
/// that is not UTF-8, is [`QueryError::BadEncoding`].
pub fn form_decode(s: &str) -> Result<String, QueryError> {
    decode(s).map(Cow::into_owned)
}

/// [`form_decode`] without a copy when there is nothing to decode, which is the common case for
/// keys and most values.
fn decode(s: &str) -> Result<Cow<'_, str>, QueryError> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s));
    }
    let src = s.as_bytes();
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while let Some(&b) = src.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = src.get(i + 1).and_then(|&h| hex(h));
                let lo = src.get(i + 2).and_then(|&l| hex(l));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(QueryError::BadEncoding);
                };
                out.push(hi << 4 | lo);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| QueryError::BadEncoding)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A `hold` value: one or more ASCII digits, saturating at `u64::MAX`.
fn parse_hold(value: &str) -> Result<u64, QueryError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QueryError::BadHold);
    }
    Ok(value.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Parses the raw query of a poll (the text after `?`).
///
/// Splits on `&` (empty pieces skipped); a piece without `=` is a key with an empty value; keys
/// and values are form-decoded; `channel`, `cursor`, `hold` and `sid` are interpreted and every
/// other key is ignored (the historic client sends `comefrom=100`). More than 16 distinct
/// channels is [`QueryError::TooManyChannels`]. Errors are reported in query order: the first
/// bad piece decides.
pub fn parse_poll_query(query: &str) -> Result<PollQuery, QueryError> {
    let mut q = PollQuery::default();
    let mut seen_cursor = false;
    let mut seen_sid = false;
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
        let key = decode(raw_key)?;
        let value = decode(raw_value)?;
        match &*key {
            "channel" => {
                if !valid_channel(&value) {
                    return Err(QueryError::BadChannel);
                }
                if !q.channels.iter().any(|c| *c == value) {
                    if q.channels.len() == MAX_CHANNELS {
                        return Err(QueryError::TooManyChannels);
                    }
                    q.channels.push(value.into_owned());
                }
            }
            "cursor" if !seen_cursor => {
                seen_cursor = true;
                q.cursor = Some(value.into_owned()).filter(|v| !v.is_empty());
            }
            "hold" if q.hold.is_none() => q.hold = Some(parse_hold(&value)?),
            "last_event_id" if q.last_event_id.is_none() => {
                q.last_event_id = Some(value.into_owned()).filter(|v| !v.is_empty());
            }
            "sid" if !seen_sid => {
                seen_sid = true;
                q.sid = Some(value.into_owned()).filter(|v| !v.is_empty());
            }
            _ => {}
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `decode!(input => Ok("out") | Err(Variant))`, in the manner of httparse's `tests/uri.rs`.
    macro_rules! decode {
        ($input:expr => Ok($out:expr)) => {
            assert_eq!(form_decode($input), Ok(String::from($out)), "{:?}", $input)
        };
        ($input:expr => Err($e:ident)) => {
            assert_eq!(form_decode($input), Err(QueryError::$e), "{:?}", $input)
        };
    }

    #[test]
    fn form_decode_table() {
        decode!("" => Ok(""));
        decode!("abc" => Ok("abc"));
        decode!("user:42" => Ok("user:42"));
        decode!("a+b" => Ok("a b"));
        decode!("+++" => Ok("   "));
        decode!("%20" => Ok(" "));
        decode!("%2B" => Ok("+"));
        decode!("%2b" => Ok("+"));
        decode!("a%2Bb+c" => Ok("a+b c"));
        decode!("user%3A42" => Ok("user:42"));
        decode!("user%3a42" => Ok("user:42"));
        decode!("%25" => Ok("%"));
        decode!("%2525" => Ok("%25"));
        decode!("%41%42%43" => Ok("ABC"));
        decode!("%26%3D" => Ok("&="));
        decode!("%00" => Ok("\0"));
        decode!("%C3%A9" => Ok("\u{e9}"));
        decode!("%c3%a9t%C3%a9" => Ok("\u{e9}t\u{e9}"));
        decode!("%F0%9F%98%80" => Ok("\u{1f600}"));
        decode!("\u{e9}" => Ok("\u{e9}"));
        decode!("%" => Err(BadEncoding));
        decode!("%2" => Err(BadEncoding));
        decode!("a%" => Err(BadEncoding));
        decode!("a%2" => Err(BadEncoding));
        decode!("%G0" => Err(BadEncoding));
        decode!("%0G" => Err(BadEncoding));
        decode!("%%20" => Err(BadEncoding));
        decode!("% 20" => Err(BadEncoding));
        decode!("%+20" => Err(BadEncoding));
        decode!("%-1" => Err(BadEncoding));
        decode!("%\u{e9}" => Err(BadEncoding));
        decode!("%FF" => Err(BadEncoding));
        decode!("%C3" => Err(BadEncoding));
        decode!("%C3%28" => Err(BadEncoding));
        decode!("%80" => Err(BadEncoding));
        decode!("%ED%A0%80" => Err(BadEncoding));
        decode!("%C0%AF" => Err(BadEncoding));
    }

    #[test]
    fn valid_channel_table() {
        let long = |n: usize| "a".repeat(n);
        let cases: &[(&str, bool)] = &[
            ("", false),
            ("a", true),
            ("Z", true),
            ("0", true),
            ("user:42", true),
            ("news.sport-eu_1@host", true),
            ("_.:@-", true),
            ("AZaz09", true),
            (&long(MAX_CHANNEL_LEN - 1), true),
            (&long(MAX_CHANNEL_LEN), true),
            (&long(MAX_CHANNEL_LEN + 1), false),
            (&long(1000), false),
            ("a b", false),
            ("a/b", false),
            ("a+b", false),
            ("a%b", false),
            ("a,b", false),
            ("a#b", false),
            ("a\0b", false),
            ("a\tb", false),
            ("\u{e9}", false),
            ("caf\u{e9}", false),
            ("\u{212a}elvin", false),
        ];
        for (name, want) in cases {
            assert_eq!(valid_channel(name), *want, "{name:?}");
        }
    }

    fn channels(names: &[&str]) -> Vec<String> {
        names.iter().map(|&s| s.to_owned()).collect()
    }

    /// The query `channel=c0&channel=c1&...` with the given indexes.
    fn channel_query(indexes: impl Iterator<Item = usize>) -> String {
        indexes
            .map(|i| format!("channel=c{i}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// `poll!(query => Ok { field: value, .. })` or `poll!(query => Err(Variant))`; fields not
    /// named are their defaults.
    macro_rules! poll {
        ($query:expr => Ok { $($field:ident: $value:expr),* $(,)? }) => {{
            let query: &str = &$query;
            #[allow(clippy::needless_update)] // the update is needed when a field is left out
            let want = PollQuery { $($field: $value,)* ..PollQuery::default() };
            assert_eq!(parse_poll_query(query), Ok(want), "{query:?}");
        }};
        ($query:expr => Err($e:ident)) => {{
            let query: &str = &$query;
            assert_eq!(parse_poll_query(query), Err(QueryError::$e), "{query:?}");
        }};
    }

    #[test]
    fn empty_and_ignored() {
        poll!("" => Ok {});
        poll!("&" => Ok {});
        poll!("&&&" => Ok {});
        poll!("comefrom=100" => Ok {});
        poll!("comefrom=100&channel=a" => Ok { channels: channels(&["a"]) });
        poll!("x&y=&=z&==" => Ok {});
        poll!("Channel=a&CHANNEL=b&channels=c& channel=d&channel =e" => Ok {});
        poll!("Hold=x&HOLD=-1&Cursor=c&SID=s" => Ok {});
        poll!("_=1700000000000&callback=jQuery123" => Ok {});
        poll!("&&channel=a&&" => Ok { channels: channels(&["a"]) });
    }

    #[test]
    fn percent_escapes_and_plus() {
        poll!("channel=user%3A42" => Ok { channels: channels(&["user:42"]) });
        poll!("channel=user%3a42&channel=user:42" => Ok { channels: channels(&["user:42"]) });
        poll!("chan%6Eel=a" => Ok { channels: channels(&["a"]) });
        poll!("%63ursor=x%2By" => Ok { cursor: Some("x+y".into()) });
        poll!("cursor=a+b" => Ok { cursor: Some("a b".into()) });
        poll!("sid=eyJ.e30.s%2D_" => Ok { sid: Some("eyJ.e30.s-_".into()) });
        poll!("hold=%33%30" => Ok { hold: Some(30) });
        poll!("cursor=%3D%26" => Ok { cursor: Some("=&".into()) });
        poll!("cursor=a=b=c" => Ok { cursor: Some("a=b=c".into()) });
        // Decoding happens before validation, so escapes cannot smuggle bad bytes.
        poll!("channel=a%20b" => Err(BadChannel));
        poll!("channel=a+b" => Err(BadChannel));
        poll!("channel=a%26channel%3Db" => Err(BadChannel));
        poll!("channel=%00" => Err(BadChannel));
        poll!("hold=+30" => Err(BadHold));
        poll!("hold=30+" => Err(BadHold));
        poll!("hold=%2B30" => Err(BadHold));
    }

    #[test]
    fn bad_encoding_anywhere() {
        poll!("channel=%" => Err(BadEncoding));
        poll!("channel=a%2" => Err(BadEncoding));
        poll!("cursor=%zz" => Err(BadEncoding));
        poll!("sid=%FF" => Err(BadEncoding));
        poll!("hold=%C3" => Err(BadEncoding));
        poll!("%=1" => Err(BadEncoding));
        poll!("chan%ZZnel=a" => Err(BadEncoding));
        // Ignored keys still must be well formed.
        poll!("comefrom=%" => Err(BadEncoding));
        poll!("x%80=1" => Err(BadEncoding));
        poll!("channel=a&junk=%G1" => Err(BadEncoding));
        // Repeats that lose to the first are still checked.
        poll!("cursor=a&cursor=%" => Err(BadEncoding));
    }

    #[test]
    fn channel_bounds() {
        let long = |n: usize| "x".repeat(n);
        poll!("channel=" => Err(BadChannel));
        poll!("channel" => Err(BadChannel));
        poll!("channel=a&channel=" => Err(BadChannel));
        poll!("channel=a" => Ok { channels: channels(&["a"]) });
        poll!(format!("channel={}", long(MAX_CHANNEL_LEN)) => Ok {
            channels: vec![long(MAX_CHANNEL_LEN)],
        });
        poll!(format!("channel={}", long(MAX_CHANNEL_LEN + 1)) => Err(BadChannel));
        // 128 bytes after decoding, 3 * 128 before: the bound is on the decoded name.
        poll!(format!("channel={}", "%41".repeat(MAX_CHANNEL_LEN)) => Ok {
            channels: vec!["A".repeat(MAX_CHANNEL_LEN)],
        });
        poll!(format!("channel={}", "%41".repeat(MAX_CHANNEL_LEN + 1)) => Err(BadChannel));
        poll!("channel=caf%C3%A9" => Err(BadChannel));
        poll!("channel=a/b" => Err(BadChannel));
        poll!("channel=user:42&channel=news.eu&channel=x@y-z_1" => Ok {
            channels: channels(&["user:42", "news.eu", "x@y-z_1"]),
        });
    }

    #[test]
    fn channel_count_and_dedupe() {
        let sixteen: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
        poll!(channel_query(0..16) => Ok { channels: sixteen.clone() });
        poll!(channel_query(0..17) => Err(TooManyChannels));
        poll!(channel_query(0..100) => Err(TooManyChannels));
        // 17 entries whose repeats dedupe to 16 distinct names are fine, first-seen order.
        poll!(channel_query((0..16).chain([3])) => Ok { channels: sixteen.clone() });
        poll!(channel_query([15].into_iter().chain(0..16)) => Ok {
            channels: [15].into_iter().chain(0..15).map(|i| format!("c{i}")).collect(),
        });
        poll!(channel_query((0..16).chain(0..16).chain(0..16)) => Ok { channels: sixteen.clone() });
        // A repeat spelled with an escape is the same channel.
        poll!(format!("{}&channel=c%31", channel_query(0..16)) => Ok { channels: sixteen });
        poll!("channel=b&channel=a&channel=b&channel=a&channel=c" => Ok {
            channels: channels(&["b", "a", "c"]),
        });
        // Channel names are case-sensitive: these are two channels.
        poll!("channel=A&channel=a" => Ok { channels: channels(&["A", "a"]) });
        // Errors come in query order.
        poll!(format!("{}&channel=", channel_query(0..17)) => Err(TooManyChannels));
        poll!(format!("channel=&{}", channel_query(0..17)) => Err(BadChannel));
    }

    #[test]
    fn hold_table() {
        let cases: &[(&str, Result<Option<u64>, QueryError>)] = &[
            ("", Ok(None)),
            ("hold=0", Ok(Some(0))),
            ("hold=30", Ok(Some(30))),
            ("hold=00030", Ok(Some(30))),
            ("hold=120", Ok(Some(120))),
            ("hold=121", Ok(Some(121))),
            ("hold=18446744073709551615", Ok(Some(u64::MAX))),
            ("hold=18446744073709551616", Ok(Some(u64::MAX))),
            ("hold=99999999999999999999999", Ok(Some(u64::MAX))),
            ("hold=", Err(QueryError::BadHold)),
            ("hold", Err(QueryError::BadHold)),
            ("hold=-1", Err(QueryError::BadHold)),
            ("hold=-0", Err(QueryError::BadHold)),
            ("hold=1.5", Err(QueryError::BadHold)),
            ("hold=1e3", Err(QueryError::BadHold)),
            ("hold=0x10", Err(QueryError::BadHold)),
            ("hold=%201", Err(QueryError::BadHold)),
            ("hold=+1", Err(QueryError::BadHold)),
            ("hold=1%20", Err(QueryError::BadHold)),
            ("hold=%EF%BC%91", Err(QueryError::BadHold)),
            ("hold=abc", Err(QueryError::BadHold)),
            // First wins; later ones are not validated beyond their encoding.
            ("hold=5&hold=10", Ok(Some(5))),
            ("hold=5&hold=x", Ok(Some(5))),
            ("hold=5&hold=", Ok(Some(5))),
            ("hold=x&hold=5", Err(QueryError::BadHold)),
            ("hold=&hold=5", Err(QueryError::BadHold)),
        ];
        for (query, want) in cases {
            assert_eq!(parse_poll_query(query).map(|q| q.hold), *want, "{query:?}");
        }
    }

    #[test]
    fn cursor_and_sid() {
        poll!("cursor=abc" => Ok { cursor: Some("abc".into()) });
        poll!("cursor=" => Ok {});
        poll!("cursor" => Ok {});
        poll!("cursor=a&cursor=b" => Ok { cursor: Some("a".into()) });
        poll!("cursor=&cursor=b" => Ok {});
        poll!("cursor&cursor=b" => Ok {});
        poll!("sid=t" => Ok { sid: Some("t".into()) });
        poll!("sid=" => Ok {});
        poll!("sid=t1&sid=t2" => Ok { sid: Some("t1".into()) });
        poll!("sid=&sid=t2" => Ok {});
        poll!("sid=%20" => Ok { sid: Some(" ".into()) });
    }

    #[test]
    fn full_queries() {
        poll!("channel=user%3A42&channel=news&cursor=1.abc&hold=25&sid=tok&comefrom=100" => Ok {
            channels: channels(&["user:42", "news"]),
            cursor: Some("1.abc".into()),
            hold: Some(25),
            sid: Some("tok".into()),
        });
        poll!("comefrom=100&hold=0&channel=a&channel=a&cursor=c&channel=b" => Ok {
            channels: channels(&["a", "b"]),
            cursor: Some("c".into()),
            hold: Some(0),
        });
    }

    #[test]
    fn error_codes_and_messages() {
        let all = [
            (QueryError::BadEncoding, "bad_query"),
            (QueryError::BadHold, "bad_hold"),
            (QueryError::BadChannel, "bad_channel"),
            (QueryError::TooManyChannels, "too_many_channels"),
        ];
        for (e, code) in all {
            assert_eq!(e.code(), code);
            let m = e.message();
            assert!(m.ends_with('.') && m.len() > 20, "{m:?}");
            // Safe to embed in a JSON string without escaping.
            assert!(m
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'));
        }
    }
}
