//! Subscriber tokens end to end (PROTOCOL.md section 4, issue 3 point 1), against the real
//! binary: a secret file, `pnsd token`, `sid` and `Authorization: Bearer`, every way a token
//! can be refused (401) or fall short (403), the anonymous-listen rule, and the publish socket's
//! mode and ownership.
//!
//! Tokens that `pnsd token` cannot produce (other algorithms, `none`, a wrong key, a past `exp`)
//! are built here by hand with the same well-kept crates the server uses (`hmac`, `sha2`,
//! `base64`) or minted with `pnsd::token::mint`, so each refusal is tested on a token that is
//! wrong in exactly one way. Every 401/403 is followed by a good request on the same
//! connection: those errors keep the connection alive.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};

use common::*;
use pnsd::token::{self, Secret};

/// The key every test server uses, as it is written to the file (the trailing LF is not part
/// of the key, PROTOCOL.md section 4).
const KEY: &[u8] = b"correct horse battery staple";

/// A token lifetime long enough that no test sees it expire.
const LONG_TTL: u64 = 3600;

/// A server started with `--secret-file` holding `file_bytes`.
fn secret_server(file_bytes: &[u8], extra: &[&str]) -> (Server, PathBuf) {
    Server::start_with_secret(file_bytes, extra)
}

/// `pnsd token --secret-file PATH --channel C... [--ttl T]`: asserts exit 0, one line of
/// output ending in a newline, and returns the token.
fn cli_token(secret: &Path, channels: &[&str], ttl: Option<u64>) -> String {
    let cwd = TempDir::new();
    let mut args = vec![
        "token".to_string(),
        "--secret-file".to_string(),
        secret.to_str().expect("utf-8 path").to_string(),
    ];
    for c in channels {
        args.push("--channel".into());
        args.push((*c).into());
    }
    if let Some(t) = ttl {
        args.push("--ttl".into());
        args.push(t.to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_pnsd(&refs, &cwd.path);
    assert_eq!(run.code(), Some(0), "pnsd token failed: {:?}", run.stderr);
    assert!(
        run.stdout.ends_with('\n') && run.stdout.lines().count() == 1,
        "pnsd token must print one line: {:?}",
        run.stdout
    );
    let tok = run.stdout.trim_end_matches('\n').to_string();
    assert_eq!(tok.split('.').count(), 3, "not a compact JWT: {tok:?}");
    tok
}

/// A token minted by the library with `KEY` for `channels`, valid for an hour.
fn lib_token(channels: &[&str]) -> String {
    mint_with(KEY, channels, now_secs() + LONG_TTL)
}

fn mint_with(key: &[u8], channels: &[&str], exp: u64) -> String {
    let chans: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    token::mint(&Secret::from_bytes(key), &chans, exp, None)
}

fn now_secs() -> u64 {
    token::unix_now() as u64
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `b64(header) . b64(payload) . b64(sign(signing input))`, built by hand.
fn jwt(header: &str, payload: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// A signer computing the MAC `M` (`Hmac<Sha256>`, `Hmac<Sha384>`, `Hmac<Sha512>`) with `key`.
fn hs<M: Mac + KeyInit>(key: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    move |input| {
        let mut m = <M as KeyInit>::new_from_slice(key).expect("hmac key");
        m.update(input);
        m.finalize().into_bytes().to_vec()
    }
}

/// A payload granting `channels`, expiring in an hour.
fn payload(channels: &[&str]) -> String {
    format!(
        r#"{{"channels":{},"exp":{}}}"#,
        serde_json::to_string(channels).expect("json"),
        now_secs() + LONG_TTL
    )
}

fn bearer(tok: &str) -> String {
    format!("Bearer {tok}")
}

/// `GET TARGET` carrying `tok` in an `Authorization: Bearer` header.
fn bearer_request(target: &str, tok: &str) -> String {
    get_with(target, &[("Authorization", &bearer(tok))])
}

/// `/pns/poll?[channel=..&]...&hold=0[&sid=..]`.
fn target(channels: &[&str], cursor: Option<&str>, hold: u64, sid: Option<&str>) -> String {
    let mut t = poll_target(channels, cursor, Some(hold));
    if let Some(s) = sid {
        t.push_str(&format!("&sid={}", pct(s)));
    }
    t
}

/// Sends a request and returns the answer.
fn ask(conn: &mut HttpConn, req: &str) -> Response {
    conn.send(req);
    conn.read_response()
}

/// A `hold=0` poll on `channel` with a good token: must be a 200 (proves the connection is
/// still usable after an error).
fn still_alive(conn: &mut HttpConn, tok: &str, channel: &str) {
    let r = conn.request(&target(&[channel], None, 0, Some(tok)));
    check_poll(&r);
}

/// Asserts a 401 on `conn` for `req` and that the connection then still serves a good poll.
fn expect_401(conn: &mut HttpConn, req: &str, good: &str, what: &str) -> String {
    let r = ask(conn, req);
    assert_eq!(r.status, 401, "{what}: wanted 401, got {r:?}");
    let code = check_error(&r, 401);
    still_alive(conn, good, "a");
    code
}

/// `token` is refused with 401 both as `sid` and as a Bearer header, on one live connection.
fn expect_401_both_ways(conn: &mut HttpConn, token: &str, good: &str, what: &str) {
    expect_401(
        conn,
        &get_request(&target(&["a"], None, 0, Some(token))),
        good,
        &format!("{what} in sid"),
    );
    expect_401(
        conn,
        &bearer_request(&target(&["a"], None, 0, None), token),
        good,
        &format!("{what} in bearer"),
    );
}

#[test]
fn cli_token_works_in_sid_and_in_bearer_header() {
    let (server, secret) = secret_server(b"correct horse battery staple\n", &[]);
    let tok = cli_token(&secret, &["a", "b"], None);

    // sid: take the current cursor, publish, see the message.
    let mut conn = server.http();
    let a = check_poll(&conn.request(&target(&["a"], None, 0, Some(&tok))));
    assert_eq!(a.c, 0);
    let id = server.publish("a", r#"{"via":"sid"}"#);
    let got = check_poll(&conn.request(&target(&["a"], Some(&a.cursor), 0, Some(&tok))));
    assert_eq!(got.ids(), vec![id.clone()]);
    assert_eq!(got.msgs[0]["data"]["via"], "sid");

    // Bearer: a parked poll woken by a publish on the other granted channel.
    conn.send(bearer_request(
        &target(&["b"], Some(&got.cursor), 30, None),
        &tok,
    ));
    server.wait_parked(1);
    let id_b = server.publish("b", r#"{"via":"bearer"}"#);
    let got = check_poll(&conn.read_response());
    assert_eq!(got.ids(), vec![id_b]);
    assert_eq!(got.msgs[0]["channel"], "b");
    assert_eq!(got.msgs[0]["data"]["via"], "bearer");
}

#[test]
fn cli_token_carries_channels_exp_and_sub() {
    let (_server, secret) = secret_server(b"correct horse battery staple\n", &[]);
    let before = now_secs();
    let cwd = TempDir::new();
    let run = run_pnsd(
        &[
            "token",
            "--secret-file",
            secret.to_str().expect("path"),
            "--channel",
            "user:42",
            "--channel",
            "news",
            "--sub",
            "alice",
        ],
        &cwd.path,
    );
    assert_eq!(run.code(), Some(0), "{:?}", run.stderr);
    let tok = run.stdout.trim_end();
    let claims = token::verify(&Secret::from_bytes(KEY), tok, token::unix_now())
        .expect("the minted token verifies with the file's key minus its newline");
    assert_eq!(claims.channels, vec!["user:42", "news"]);
    assert_eq!(claims.sub.as_deref(), Some("alice"));
    // Default --ttl is 3600 s (checked against the clock around the run, never a speed bound).
    let after = now_secs();
    assert!(
        claims.exp >= (before + 3600) as f64 && claims.exp <= (after + 3601) as f64,
        "exp {} not now+3600 ({before}..{after})",
        claims.exp
    );
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(tok.split('.').next().expect("header"))
            .expect("base64url header"),
    )
    .expect("json header");
    assert_eq!(header["alg"], "HS256");
}

#[test]
fn bearer_header_wins_over_sid() {
    let (server, _secret) = secret_server(b"correct horse battery staple\n", &[]);
    let good = lib_token(&["a"]);
    let mut conn = server.http();

    // A good header beats a bad sid.
    let r = ask(
        &mut conn,
        &bearer_request(&target(&["a"], None, 0, Some("garbage.token.here")), &good),
    );
    check_poll(&r);

    // A bad header is not rescued by a good sid.
    let bad = mint_with(b"another key", &["a"], now_secs() + LONG_TTL);
    let r = ask(
        &mut conn,
        &bearer_request(&target(&["a"], None, 0, Some(&good)), &bad),
    );
    check_error(&r, 401);

    // The header's grants count, not the sid's.
    let only_b = lib_token(&["b"]);
    let r = ask(
        &mut conn,
        &bearer_request(&target(&["a"], None, 0, Some(&good)), &only_b),
    );
    check_error(&r, 403);
    still_alive(&mut conn, &good, "a");
}

#[test]
fn missing_and_malformed_tokens_are_401_and_keep_the_connection() {
    let (server, _secret) = secret_server(b"correct horse battery staple\n", &[]);
    let good = lib_token(&["a"]);
    let mut conn = server.http();

    expect_401(
        &mut conn,
        &get_request(&target(&["a"], None, 0, None)),
        &good,
        "no token",
    );
    expect_401(
        &mut conn,
        &get_request("/pns/poll?hold=0"),
        &good,
        "no token, no channel",
    );
    expect_401(
        &mut conn,
        &get_request(&target(&["a"], None, 0, Some(""))),
        &good,
        "empty sid",
    );
    let parts: Vec<&str> = good.split('.').collect();
    let malformed = [
        "abc".to_string(),
        "a.b.c".to_string(),
        "..".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.{}", parts[2]),
        format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.!!!.{}", parts[0], parts[2]),
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        "x".repeat(5000),
    ];
    for m in &malformed {
        expect_401_both_ways(&mut conn, m, &good, &format!("malformed {m:.60}"));
    }
    // A signed token whose claims are unusable.
    for p in [
        r#"{"exp":9999999999}"#.to_string(),
        r#"{"channels":["a"]}"#.to_string(),
        r#"{"channels":"a","exp":9999999999}"#.to_string(),
        r#"{"channels":["a"],"exp":"9999999999"}"#.to_string(),
        r#"["a"]"#.to_string(),
    ] {
        let t = jwt(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &p,
            hs::<Hmac<Sha256>>(KEY),
        );
        expect_401(
            &mut conn,
            &get_request(&target(&["a"], None, 0, Some(&t))),
            &good,
            &format!("bad claims {p}"),
        );
    }
}

#[test]
fn hand_built_hs256_token_is_accepted() {
    // Checks the hand-built tokens of the refusal tests: right in every way, this one passes.
    let (server, _secret) = secret_server(b"correct horse battery staple\n", &[]);
    let t = jwt(
        r#"{"typ":"JWT","alg":"HS256"}"#,
        &payload(&["a"]),
        hs::<Hmac<Sha256>>(KEY),
    );
    let mut conn = server.http();
    check_poll(&conn.request(&target(&["a"], None, 0, Some(&t))));
    check_poll(&ask(
        &mut conn,
        &bearer_request(&target(&["a"], None, 0, None), &t),
    ));
}

#[test]
fn alg_none_and_other_algorithms_are_401() {
    let (server, _secret) = secret_server(b"correct horse battery staple\n", &[]);
    let good = lib_token(&["a"]);
    let p = payload(&["a"]);
    let none_empty = jwt(r#"{"alg":"none"}"#, &p, |_| Vec::new());
    let none_typ = jwt(r#"{"alg":"none","typ":"JWT"}"#, &p, |_| Vec::new());
    // `none` carrying a valid HS256 signature still names the wrong algorithm.
    let none_signed = jwt(r#"{"alg":"none"}"#, &p, hs::<Hmac<Sha256>>(KEY));
    let upper_none = jwt(r#"{"alg":"NONE"}"#, &p, |_| Vec::new());
    let hs512_tok = jwt(
        r#"{"alg":"HS512","typ":"JWT"}"#,
        &p,
        hs::<Hmac<Sha512>>(KEY),
    );
    let hs384_tok = jwt(
        r#"{"alg":"HS384","typ":"JWT"}"#,
        &p,
        hs::<Hmac<Sha384>>(KEY),
    );
    // The same key and an HS256 MAC, but the header lies about the algorithm.
    let hs512_claiming = jwt(
        r#"{"alg":"HS512","typ":"JWT"}"#,
        &p,
        hs::<Hmac<Sha256>>(KEY),
    );
    let lower = jwt(
        r#"{"alg":"hs256","typ":"JWT"}"#,
        &p,
        hs::<Hmac<Sha256>>(KEY),
    );
    let rs256 = jwt(
        r#"{"alg":"RS256","typ":"JWT"}"#,
        &p,
        hs::<Hmac<Sha256>>(KEY),
    );
    let no_alg = jwt(r#"{"typ":"JWT"}"#, &p, hs::<Hmac<Sha256>>(KEY));
    let alg_num = jwt(r#"{"alg":256}"#, &p, hs::<Hmac<Sha256>>(KEY));
    let mut conn = server.http();
    for (name, t) in [
        ("none, empty signature", &none_empty),
        ("none with typ", &none_typ),
        ("none with an HS256 signature", &none_signed),
        ("NONE", &upper_none),
        ("HS512", &hs512_tok),
        ("HS384", &hs384_tok),
        ("HS512 header on an HS256 MAC", &hs512_claiming),
        ("hs256 lower case", &lower),
        ("RS256", &rs256),
        ("no alg", &no_alg),
        ("numeric alg", &alg_num),
    ] {
        expect_401_both_ways(&mut conn, t, &good, name);
    }
}

#[test]
fn wrong_key_and_tampered_tokens_are_401() {
    let (server, _secret) = secret_server(b"correct horse battery staple\n", &[]);
    let good = lib_token(&["a"]);
    let mut conn = server.http();
    let wrong = mint_with(
        b"correct horse battery stapl",
        &["a"],
        now_secs() + LONG_TTL,
    );
    let with_newline = mint_with(
        b"correct horse battery staple\n",
        &["a"],
        now_secs() + LONG_TTL,
    );
    // Payload swapped for one granting more, signature kept.
    let parts: Vec<&str> = good.split('.').collect();
    let more = b64(payload(&["a", "admin"]).as_bytes());
    let tampered = format!("{}.{more}.{}", parts[0], parts[2]);
    // One signature bit flipped.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
    sig[0] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    for (name, t) in [
        ("wrong key", &wrong),
        ("key with the file's newline", &with_newline),
        ("tampered payload", &tampered),
        ("flipped signature bit", &flipped),
    ] {
        expect_401_both_ways(&mut conn, t, &good, name);
    }
}

#[test]
fn a_parked_poll_is_answered_401_when_its_token_expires() {
    // Issue 8: no message is delivered on an expired token, also to a poll parked before exp.
    let (server, _) = secret_server(b"correct horse battery staple\n", &[]);
    let good = lib_token(&["a"]);
    let mut conn = server.http();
    let cursor = check_poll(&conn.request(&target(&["a"], None, 0, Some(&good)))).cursor;
    let exp = now_secs() + 2;
    let t = mint_with(KEY, &["a"], exp);
    conn.get(&target(&["a"], Some(&cursor), 8, Some(&t)));
    wait_past(exp);
    let id = server.publish("a", "\"after exp\"");
    let r = conn.read_response();
    assert_eq!(check_error(&r, 401), "token_expired", "{r:?}");
    assert!(!r.closes(), "a 401 keeps the connection");
    assert_eq!(
        server.stats()["delivered"],
        0,
        "delivered on an expired token"
    );
    // The same connection, with a good token, gets the message the expired one did not.
    let p = check_poll(&conn.request(&target(&["a"], Some(&cursor), 0, Some(&good))));
    assert_eq!(p.ids(), vec![id]);
}

#[test]
fn expired_tokens_are_401() {
    let (server, secret) = secret_server(b"correct horse battery staple\n", &[]);
    let good = lib_token(&["a"]);
    let mut conn = server.http();
    for exp in [0, 1, now_secs() - 3600, now_secs() - 1] {
        let t = mint_with(KEY, &["a"], exp);
        expect_401(
            &mut conn,
            &get_request(&target(&["a"], None, 0, Some(&t))),
            &good,
            &format!("exp {exp}"),
        );
    }

    // A token valid now and expired later: before exp it works (checked only when the answer
    // arrived before exp, so a slow machine cannot fail this), after exp it is 401.
    let exp = now_secs() + 3;
    let t = mint_with(KEY, &["a"], exp);
    let r = conn.request(&target(&["a"], None, 0, Some(&t)));
    if token::unix_now() < exp as f64 {
        check_poll(&r);
    }
    wait_past(exp);
    expect_401(
        &mut conn,
        &get_request(&target(&["a"], None, 0, Some(&t))),
        &good,
        "token past its exp",
    );

    // `pnsd token --ttl 1`: read its exp, wait past it, 401.
    let t = cli_token(&secret, &["a"], Some(1));
    let claims = token::verify(&Secret::from_bytes(KEY), &t, 0.0).expect("verifies");
    wait_past(claims.exp as u64);
    expect_401(
        &mut conn,
        &bearer_request(&target(&["a"], None, 0, None), &t),
        &good,
        "--ttl 1 token past its exp",
    );
}

/// Sleeps until the clock is at or past `exp` (no leeway: `exp` itself is expired).
fn wait_past(exp: u64) {
    let deadline = Instant::now() + DEADLINE;
    while token::unix_now() < exp as f64 {
        assert!(Instant::now() < deadline, "clock never reached {exp}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn non_bearer_authorization_is_401() {
    let (server, _secret) = secret_server(b"correct horse battery staple\n", &[]);
    let good = lib_token(&["a"]);
    let mut conn = server.http();
    for value in [
        "Basic dXNlcjpwYXNz".to_string(),
        format!("Token {good}"),
        good.clone(),
        "Bearer".to_string(),
        "Bearer ".to_string(),
        "Digest username=\"x\"".to_string(),
    ] {
        // Even with a good sid: a non-Bearer header is refused, not skipped.
        expect_401(
            &mut conn,
            &get_with(
                &target(&["a"], None, 0, Some(&good)),
                &[("Authorization", &value)],
            ),
            &good,
            &format!("Authorization: {value:.40}"),
        );
    }
    // The scheme name is case-insensitive (RFC 7235 section 2.1).
    let r = ask(
        &mut conn,
        &get_with(
            &target(&["a"], None, 0, None),
            &[("Authorization", &format!("bearer {good}"))],
        ),
    );
    check_poll(&r);
}

#[test]
fn ungranted_channel_is_403_and_keeps_the_connection() {
    let (server, _secret) = secret_server(b"correct horse battery staple\n", &[]);
    let tok = lib_token(&["a", "b"]);
    let mut conn = server.http();
    for chans in [&["c"][..], &["a", "c"], &["c", "a", "b"]] {
        let r = conn.request(&target(chans, None, 0, Some(&tok)));
        check_error(&r, 403);
        still_alive(&mut conn, &tok, "a");
        let r = ask(
            &mut conn,
            &bearer_request(&target(chans, None, 0, None), &tok),
        );
        check_error(&r, 403);
        still_alive(&mut conn, &tok, "b");
    }
    // A subset of the grants is fine.
    check_poll(&conn.request(&target(&["b", "a"], None, 0, Some(&tok))));
}

#[test]
fn no_channel_named_subscribes_every_granted_channel() {
    let (server, _secret) = secret_server(b"correct horse battery staple\n", &[]);
    let tok = lib_token(&["a", "b", "c"]);
    let mut conn = server.http();
    let start = check_poll(&conn.request(&target(&[], None, 0, Some(&tok))));
    assert_eq!(start.c, 0);

    // Published in this order; "d" is not granted and must not show up.
    let mut want = Vec::new();
    for ch in ["d", "a", "d", "b", "c", "d"] {
        let id = server.publish(ch, &format!("{{\"on\":\"{ch}\"}}"));
        if ch != "d" {
            want.push((id, ch));
        }
    }
    let got = check_poll(&conn.request(&target(&[], Some(&start.cursor), 0, Some(&tok))));
    let seen: Vec<(String, &str)> = got
        .msgs
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id").to_string(),
                m["channel"].as_str().expect("channel"),
            )
        })
        .collect();
    let want: Vec<(String, &str)> = want.into_iter().collect();
    assert_eq!(seen, want, "answer {}", got.body);

    // A parked poll without channel wakes for each granted channel, in turn.
    let mut cursor = got.cursor;
    for ch in ["c", "a", "b"] {
        conn.send(bearer_request(&target(&[], Some(&cursor), 30, None), &tok));
        server.wait_parked(1);
        server.publish("d", "\"not granted\"");
        let id = server.publish(ch, "1");
        let got = check_poll(&conn.read_response());
        assert_eq!(got.ids(), vec![id], "answer {}", got.body);
        assert_eq!(got.msgs[0]["channel"], ch);
        cursor = got.cursor;
    }
}

#[test]
fn secret_file_with_trailing_crlf_is_the_same_key() {
    for file in [
        &b"correct horse battery staple\r\n"[..],
        &b"correct horse battery staple\n"[..],
        &b"correct horse battery staple"[..],
    ] {
        let (server, secret) = secret_server(file, &[]);
        let mut conn = server.http();
        // A library token for the bare key works...
        let t = lib_token(&["a"]);
        check_poll(&conn.request(&target(&["a"], None, 0, Some(&t))));
        // ...and so does the CLI's token from the same file.
        let t = cli_token(&secret, &["a"], None);
        check_poll(&conn.request(&target(&["a"], None, 0, Some(&t))));
        // Only one line ending is removed: a key that ends in a newline still differs.
        let t = mint_with(
            b"correct horse battery staple\r",
            &["a"],
            now_secs() + LONG_TTL,
        );
        check_error(&conn.request(&target(&["a"], None, 0, Some(&t))), 401);
    }
    // Two trailing newlines: the key keeps one.
    let (server, _secret) = secret_server(b"k\n\n", &[]);
    let mut conn = server.http();
    let t = mint_with(b"k\n", &["a"], now_secs() + LONG_TTL);
    check_poll(&conn.request(&target(&["a"], None, 0, Some(&t))));
}

#[test]
fn without_secret_sid_is_ignored_and_channel_required() {
    let server = Server::start(&[]);
    let mut conn = server.http();
    let r = conn.request(&target(&["a"], None, 0, Some("not.a.token")));
    check_poll(&r);
    let r = conn.request("/pns/poll?hold=0&sid=x.y.z");
    check_error(&r, 400);
}

#[test]
fn non_loopback_listen_needs_secret_or_allow_anonymous() {
    let dir = TempDir::new();
    let sock = dir.join("s.sock");
    let sock_s = sock.to_str().expect("path");
    let run = run_pnsd(
        &["serve", "--listen", "0.0.0.0:0", "--publish-socket", sock_s],
        &dir.path,
    );
    assert_eq!(run.code(), Some(2), "stderr {:?}", run.stderr);
    run.one_stderr_line();
    assert!(run.stdout.is_empty(), "printed {:?}", run.stdout);
    assert!(!sock.exists(), "a refused start left {}", sock.display());

    // --allow-anonymous: starts, serves open channels on the unspecified address.
    let server = Server::start(&["--listen", "0.0.0.0:0", "--allow-anonymous"]);
    anonymous_round_trip(&server);

    // --secret-file: starts, and the non-loopback listener demands a token.
    let (server, _secret) = secret_server(
        b"correct horse battery staple\n",
        &["--listen", "0.0.0.0:0"],
    );
    let wild = wildcard_addr(&server);
    let mut conn = HttpConn::connect(wild);
    check_error(&conn.request(&target(&["a"], None, 0, None)), 401);
    check_poll(&conn.request(&target(&["a"], None, 0, Some(&lib_token(&["a"])))));
}

/// The `0.0.0.0` address of the startup line, reached through 127.0.0.1.
fn wildcard_addr(server: &Server) -> std::net::SocketAddr {
    let wild = server
        .addrs
        .iter()
        .find(|a| a.ip().is_unspecified())
        .unwrap_or_else(|| panic!("no 0.0.0.0 address in {:?}", server.line));
    std::net::SocketAddr::from(([127, 0, 0, 1], wild.port()))
}

fn anonymous_round_trip(server: &Server) {
    let mut conn = HttpConn::connect(wildcard_addr(server));
    let a = check_poll(&conn.request(&target(&["a"], None, 0, None)));
    let id = server.publish("a", "\"open\"");
    let got = check_poll(&conn.request(&target(&["a"], Some(&a.cursor), 0, None)));
    assert_eq!(got.ids(), vec![id]);
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn publish_socket_is_0600_unless_widened() {
    let server = Server::start(&[]);
    assert_eq!(
        mode_of(&server.socket),
        0o600,
        "default publish socket mode"
    );
    server.publish("a", "1");

    let server = Server::start(&["--publish-socket-mode", "0660"]);
    assert_eq!(mode_of(&server.socket), 0o660, "--publish-socket-mode 0660");
    server.publish("a", "1");
}

#[test]
fn a_live_publish_socket_is_never_stolen() {
    let first = Server::start(&[]);
    let before = check_poll(&first.http().request(&poll_target(&["a"], None, Some(0))));
    let sock = first.socket.to_str().expect("path").to_string();
    let cwd = TempDir::new();
    let run = run_pnsd(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--publish-socket",
            &sock,
        ],
        &cwd.path,
    );
    assert_eq!(run.code(), Some(1), "second server: {:?}", run.stderr);
    run.one_stderr_line();
    assert!(run.stdout.is_empty(), "printed {:?}", run.stdout);

    // The first server still owns its socket: publishes reach its subscribers.
    assert!(first.socket.exists(), "the socket file was removed");
    assert_eq!(mode_of(&first.socket), 0o600);
    let id = first.publish("a", "\"still mine\"");
    let got = check_poll(&first.http().request(&poll_target(
        &["a"],
        Some(&before.cursor),
        Some(0),
    )));
    assert_eq!(got.ids(), vec![id]);
    assert_eq!(first.stats()["published"], 1);
}

#[test]
fn ipv6_unspecified_listen_also_needs_secret() {
    let dir = TempDir::new();
    let sock = dir.join("s.sock");
    let run = run_pnsd(
        &[
            "--listen",
            "[::]:0",
            "--publish-socket",
            sock.to_str().expect("path"),
        ],
        &dir.path,
    );
    assert_eq!(run.code(), Some(2), "stderr {:?}", run.stderr);
    run.one_stderr_line();
    assert!(!sock.exists());
}

#[test]
fn an_unusable_secret_file_never_starts_an_open_server() {
    // Asked for tokens, the server must not fall back to open channels: a missing or empty key
    // file is a start-up error with one stderr line (exit 2 or 1), and nothing is left behind.
    let dir = TempDir::new();
    let empty = dir.join("empty");
    std::fs::write(&empty, b"\n").expect("write");
    let missing = dir.join("missing");
    for key in [&empty, &missing] {
        let sock = dir.join("s.sock");
        let run = run_pnsd(
            &[
                "--listen",
                "127.0.0.1:0",
                "--publish-socket",
                sock.to_str().expect("path"),
                "--secret-file",
                key.to_str().expect("path"),
            ],
            &dir.path,
        );
        assert!(
            matches!(run.code(), Some(1) | Some(2)),
            "{}: exit {:?}, stderr {:?}",
            key.display(),
            run.code(),
            run.stderr
        );
        run.one_stderr_line();
        assert!(run.stdout.is_empty(), "printed {:?}", run.stdout);
        assert!(!sock.exists(), "left {}", sock.display());
    }
}
