//! `/metrics` (`--metrics-listen`), the Grafana dashboard over it, and the access log
//! (`--access-log`), against the real binary over real sockets. The scrapes are checked with
//! `promtool check metrics` (Debian's `prometheus` package); without promtool that check is
//! skipped loudly (a failure under `PNSD_REQUIRE_ALL=1`), the value checks still run.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

const PROMTOOL_HINT: &str = "apt-get install prometheus";

/// Runs `promtool check metrics` on `text`; false (after the loud line) without promtool.
fn promtool_accepts(test: &str, text: &str) -> bool {
    if !program_available(test, "promtool", PROMTOOL_HINT) {
        return false;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn value(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn the_figures_move_with_polls_publishes_and_errors_and_pass_promtool() {
    let test = "the_figures_move_with_polls_publishes_and_errors_and_pass_promtool";
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0", "--threads", "2"]);
    let first = server.scrape();
    promtool_accepts(test, &first);
    assert_eq!(value(&first, "pnsd_published_total"), 0.0);
    assert_eq!(value(&first, "pnsd_reactors"), 2.0);
    assert!(
        !first.contains("pnsd_redis_"),
        "fleet figures outside fleet mode"
    );

    // Two parked polls, counted by the gauge while they wait.
    let cursor = server.cursor_now("m");
    let mut waiting: Vec<HttpConn> = (0..2).map(|_| server.http()).collect();
    for c in &mut waiting {
        c.get(&poll_target(&["m"], Some(&cursor), Some(30)));
    }
    let parked = server.wait_metric("pnsd_parked_polls", 2.0);
    assert!(value(&parked, "pnsd_connections") >= 2.0);

    // One publish answers both.
    server.publish("m", "{\"n\":1}");
    for c in &mut waiting {
        assert_eq!(check_poll(&c.read_response()).c, 1);
    }
    // Errors: a 404, a 400 (bad cursor), a malformed publish line.
    let mut conn = server.http();
    check_error(&conn.request("/elsewhere"), 404);
    let mut conn = server.http();
    check_error(
        &conn.request(&poll_target(&["m"], Some("nonsense"), Some(0))),
        400,
    );
    let mut publisher = server.publisher();
    let refused = publisher.request("{\"channel\":\"m\",\"data\":");
    assert_eq!(refused["ok"], false, "{refused}");

    let text = server.wait_metric("pnsd_parked_polls", 0.0);
    promtool_accepts(test, &text);
    assert_eq!(value(&text, "pnsd_published_total"), 1.0);
    assert_eq!(value(&text, "pnsd_delivered_total"), 2.0);
    assert_eq!(value(&text, "pnsd_answers_total{outcome=\"message\"}"), 2.0);
    // cursor_now's hold=0 poll.
    assert_eq!(value(&text, "pnsd_answers_total{outcome=\"timeout\"}"), 1.0);
    assert_eq!(value(&text, "pnsd_answers_total{outcome=\"error\"}"), 2.0);
    assert_eq!(value(&text, "pnsd_http_errors_total{status=\"404\"}"), 1.0);
    assert_eq!(value(&text, "pnsd_http_errors_total{status=\"400\"}"), 1.0);
    assert_eq!(value(&text, "pnsd_publish_errors_total"), 1.0);
    assert_eq!(value(&text, "pnsd_channels"), 1.0);
    assert_eq!(value(&text, "pnsd_buffered_messages"), 1.0);
    // Both polls were on one reactor or on two: one observation per reactor that answered.
    let fanouts = value(&text, "pnsd_fanout_seconds_count");
    assert!((1.0..=2.0).contains(&fanouts), "{fanouts}");
    assert_eq!(
        value(&text, "pnsd_fanout_seconds_bucket{le=\"+Inf\"}"),
        fanouts
    );
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);
    assert!(value(&text, "process_open_fds") > 0.0);
    assert!(value(&text, "process_max_fds") >= value(&text, "process_open_fds"));
    // The stats line reads the same per-reactor gauges.
    let stats = server.stats();
    assert_eq!(stats["delivered"], 2);
    assert_eq!(stats["parked"], 0);
}

#[test]
fn a_connection_over_the_limit_is_counted_as_refused() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0", "--max-connections", "1"]);
    let mut held = server.http();
    held.get(&poll_target(&["x"], None, Some(30)));
    server.wait_metric("pnsd_parked_polls", 1.0);
    let mut over = server.http();
    let resp = over.read_response_until_close();
    check_error(&resp, 503);
    let text = server.wait_metric("pnsd_connections_refused_total", 1.0);
    assert_eq!(value(&text, "pnsd_http_errors_total{status=\"503\"}"), 1.0);
}

#[test]
fn only_get_metrics_is_served() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = server.metrics.expect("metrics address");
    assert_eq!(http_get_once(addr, "/").0, 404);
    assert_eq!(http_get_once(addr, "/metrics/x").0, 404);
    let post =
        "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(http_once(addr, post).0, 404);
    let (status, body) = http_get_once(addr, "/metrics?debug=1");
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE pnsd_parked_polls gauge"));
    // The HTTP side does not serve /metrics.
    check_error(&server.http().request("/metrics"), 404);
}

#[test]
fn metrics_on_a_public_address_need_allow_anonymous() {
    let dir = TempDir::new();
    let run = run_pnsd(&["--metrics-listen", "0.0.0.0:0"], &dir.path);
    assert_eq!(run.code(), Some(2));
    assert!(
        run.one_stderr_line().contains("--metrics-listen"),
        "{}",
        run.stderr
    );
}

/// The dashboard is well-formed JSON with a datasource variable, and every series its queries
/// name is one a real scrape has.
#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/grafana/pnsd.json");
    let text = std::fs::read_to_string(path).expect("dist/grafana/pnsd.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "no datasource variable"
    );
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    // Fleet figures exist only in fleet mode: render them from the library with a link
    // registered, as fleet mode's start-up does.
    let hub = pnsd::hub::Hub::new(pnsd::config::Config::default(), 1, None, 1);
    let feed = std::sync::Arc::new(pnsd::fleet::FeedState::default());
    hub.fleet.set(feed).expect("registered once");
    let scrape = server.scrape() + &pnsd::metrics::Snapshot::take(&hub).render();
    let exported: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let panels = dash["panels"].as_array().expect("panels");
    let mut queried = BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("pnsd_") || word.starts_with("process_") {
                    queried.insert(word.to_string());
                }
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for q in &queried {
        assert!(
            exported.contains(q.as_str()),
            "the dashboard queries {q}, not exported"
        );
    }
}

/// Lines written so far, waiting (bounded) until there are `n`.
fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(std::time::Instant::now() < deadline, "only {lines:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn the_access_log_has_a_line_per_answer_and_none_for_a_waiting_poll() {
    let dir = TempDir::new();
    let log = dir.join("access.log");
    let log_arg = log.to_str().expect("utf-8 path");
    let server = Server::start(&["--access-log", log_arg]);
    let cursor = server.cursor_now("a");
    let mut parked = server.http();
    let local = parked.stream.local_addr().expect("local addr");
    parked.get(&poll_target(&["a", "b"], Some(&cursor), Some(30)));
    server.wait_parked(1);
    let mut other = server.http();
    check_error(&other.request("/nowhere"), 404);
    let lines = wait_lines(&log, 2);
    assert_eq!(lines.len(), 2, "a waiting poll has a line: {lines:?}");
    assert_eq!(field(&lines[0], "status"), "200");
    assert_eq!(field(&lines[0], "messages"), "0");
    assert_eq!(field(&lines[1], "status"), "404");
    assert_eq!(field(&lines[1], "channels"), "0");

    server.publish("b", "true");
    assert_eq!(check_poll(&parked.read_response()).c, 1);
    let lines = wait_lines(&log, 3);
    let l = &lines[2];
    assert_eq!(field(l, "peer"), local.to_string(), "{l}");
    assert_eq!(field(l, "status"), "200");
    assert_eq!(field(l, "channels"), "2");
    assert_eq!(field(l, "messages"), "1");
    let held: u64 = field(l, "held_ms").parse().expect("held_ms");
    assert!(held < 30_000, "{l}");
    let bytes: usize = field(l, "bytes").parse().expect("bytes");
    assert!(bytes > 100, "{l}");
    let time = field(l, "time");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{l}"
    );
}

/// Scrapers that connect and never send hold at most `MAX_SCRAPERS` (8) slots: one more is
/// closed at once, and the HTTP side and publishing go on regardless.
#[test]
fn silent_scrapers_are_bounded_and_hold_nothing_else_up() {
    use std::io::Read;
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = server.metrics.expect("metrics address");
    let silent: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    // The ninth: closed by the server without an answer.
    let mut ninth = std::net::TcpStream::connect(addr).expect("connect");
    ninth.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = [0u8; 64];
    let n = ninth.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the ninth scraper got bytes");
    // Meanwhile polls and publishes are served.
    let cursor = server.cursor_now("s");
    let mut poll = server.http();
    poll.get(&poll_target(&["s"], Some(&cursor), Some(30)));
    server.wait_parked(1);
    server.publish("s", "1");
    assert_eq!(check_poll(&poll.read_response()).c, 1);
    drop(silent);
    // With the silent ones gone, scrapes are served again.
    server.wait_metric("pnsd_published_total", 1.0);
}
