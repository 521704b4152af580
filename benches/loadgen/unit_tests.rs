//! Unit tests of the load generator's parts that need no server: option parsing, HTTP framing,
//! /proc parsing, the dialects, the report and the order check; and one run of every scenario,
//! with small counts, against the pnsd binary this package builds (`against_pnsd`).
//!
//! Invariants: this is a separate test target (`[[test]] name = "loadgen_units"`) because the
//! bench target is built with `harness = false`, which never runs `#[test]` functions; it
//! compiles the very same module files as `main.rs` (via `#[path]`), so what is tested is what
//! runs. Not every module item is used by the tests, hence `dead_code` is allowed here only.
#![allow(dead_code)]

#[path = "args.rs"]
mod args;
#[path = "crowd.rs"]
mod crowd;
#[path = "dialect.rs"]
mod dialect;
#[path = "http.rs"]
mod http;
#[path = "order.rs"]
mod order;
#[path = "procfs.rs"]
mod procfs;
#[path = "publisher.rs"]
mod publisher;
#[path = "reactor.rs"]
mod reactor;
#[path = "report.rs"]
mod report;
#[path = "scenarios.rs"]
mod scenarios;
#[path = "sse.rs"]
mod sse;
#[path = "upgrade.rs"]
mod upgrade;

/// A command line split at whitespace, as the shell would hand it over.
fn argv(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// The options of a command line that must parse.
fn opts(line: &str) -> args::Options {
    match args::parse(&argv(line)) {
        Ok(args::Command::Run(o)) => *o,
        _ => panic!("options did not parse: {line}"),
    }
}

mod args_tests {
    use crate::args::*;
    use crate::argv;

    #[test]
    fn bench_flag_alone_is_usage() {
        assert!(matches!(parse(&argv("--bench")), Ok(Command::Usage)));
        assert!(matches!(parse(&argv("")), Ok(Command::Usage)));
    }

    #[test]
    fn full_line_parses() {
        let line = "--target nchan --addr 127.0.0.1:9 --publish-url http://127.0.0.1:9/pub \
                    --pid 1 --pid 2 --scenario fanout --conns 10 --bench";
        let Ok(Command::Run(o)) = parse(&argv(line)) else {
            panic!("did not parse")
        };
        assert_eq!(o.target, Target::Nchan);
        assert_eq!(o.pids, vec![1, 2]);
        assert_eq!(o.conns, 10);
        assert_eq!(o.label, "nchan");
        assert_eq!(o.publish_url.map(|u| u.path), Some("/pub".to_string()));
        assert!(o.client_threads >= 1);
        let Ok(Command::Run(o)) = parse(&argv("--client-threads 3")) else {
            panic!("did not parse")
        };
        assert_eq!(o.client_threads, 3);
        assert_eq!(o.repoll_lag, 32);
        let Ok(Command::Run(o)) = parse(&argv("--repoll-lag 0")) else {
            panic!("did not parse")
        };
        assert_eq!(o.repoll_lag, 0);
    }

    #[test]
    fn sse_density_runs_alone_never_in_all() {
        let Ok(Command::Run(o)) = parse(&argv("--scenario sse-density")) else {
            panic!("did not parse")
        };
        assert!(o.runs(Scenario::SseDensity) && !o.runs(Scenario::Density));
        let Ok(Command::Run(o)) = parse(&argv("--scenario all")) else {
            panic!("did not parse")
        };
        assert!(o.runs(Scenario::Density) && !o.runs(Scenario::SseDensity));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(parse(&argv("--conns 0")).is_err());
        assert!(parse(&argv("--client-threads 0")).is_err());
        assert!(parse(&argv("--target nchan")).is_err());
        assert!(parse(&argv("--frobnicate 1")).is_err());
        assert!(parse(&argv("--conns")).is_err());
    }
}

mod http_tests {
    use crate::http::*;

    fn complete(buf: &[u8]) -> (Response, usize) {
        match parse_response(buf, false) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn content_length_and_following_bytes() {
        let buf = b"HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1";
        let (r, n) = complete(buf);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hi");
        assert_eq!(r.etag.as_deref(), Some("\"abc\""));
        assert_eq!(&buf[n..], b"HTTP/1.1");
        assert!(!r.close);
    }

    #[test]
    fn partial_everywhere() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..buf.len() {
            assert_eq!(
                parse_response(&buf[..cut], false),
                Ok(Parsed::Partial),
                "{cut}"
            );
        }
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        for cut in 0..chunked.len() {
            assert_eq!(
                parse_response(&chunked[..cut], false),
                Ok(Parsed::Partial),
                "{cut}"
            );
        }
        let (r, n) = complete(chunked);
        assert_eq!(r.body, b"abcde");
        assert_eq!(n, chunked.len());
    }

    #[test]
    fn until_close_and_interim_and_304() {
        let buf = b"HTTP/1.0 200 OK\r\n\r\nbody";
        assert_eq!(parse_response(buf, false), Ok(Parsed::Partial));
        match parse_response(buf, true) {
            Ok(Parsed::Complete(r, n)) => {
                assert_eq!(r.body, b"body");
                assert!(r.close);
                assert_eq!(n, buf.len());
            }
            other => panic!("{other:?}"),
        }
        let (r, _) = complete(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 304);
        assert!(r.close);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", true),
            Err(HttpError::Truncated)
        );
    }

    #[test]
    fn encoding() {
        let mut out = Vec::new();
        percent_encode("a b/c~", &mut out);
        assert_eq!(out, b"a%20b%2Fc~");
    }
}

mod procfs_tests {
    use crate::procfs::*;
    use std::net::SocketAddr;

    #[test]
    fn fields() {
        let smaps =
            "55d-7ff ---p 00000000 00:00 0 [rollup]\nRss:  100 kB\nPss:   42 kB\nPss_Anon: 1 kB\n";
        assert_eq!(parse_kb_field(smaps, "Pss"), Some(42));
        let stat = "123 (a b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(parse_stat_ticks(stat), Some(11 + 12));
        let sockstat =
            "sockets: used 5\nTCP: inuse 3 orphan 0 tw 0 alloc 4 mem 7\nUDP: inuse 0 mem 2\n";
        assert_eq!(parse_sockstat_tcp_mem(sockstat), Some(7));
    }

    #[test]
    fn tcp_table() {
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!());
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
   1: 0100007F:1F90 0200007F:9C40 01 00000000:00000000\n\
   2: 0100007F:1F90 0300007F:9C40 01 00000000:0000004A\n\
   3: 0200007F:9C40 0100007F:1F90 01 00000000:00000000\n\
   4: 0300007F:9C40 0100007F:1F90 01 00000000:00000100\n";
        assert_eq!(parse_sockets(text, server, End::Server), (2, 1, 0x4A));
        assert_eq!(parse_sockets(text, server, End::Client), (2, 1, 0x100));
        let text6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue\n\
   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000200007F:9C40 01 00000000:00000000\n\
   1: 0000000000000000FFFF00000200007F:9C40 0000000000000000FFFF00000100007F:1F90 01 00000000:00000000\n";
        assert_eq!(parse_sockets(text6, server, End::Server), (1, 0, 0));
        assert_eq!(parse_sockets(text6, server, End::Client), (1, 0, 0));
    }
}

mod dialect_tests {
    use crate::args::Target;
    use crate::dialect::*;
    use crate::http::Response;
    use crate::opts;

    #[test]
    fn pnsd_poll_and_answer() {
        let o = opts("--addr 127.0.0.1:80");
        let mut out = Vec::new();
        let mut cur = Cursor::default();
        poll_request(&o, "a:b", &cur, &mut out);
        assert_eq!(
            out,
            b"GET /pns/poll?channel=a%3Ab&hold=120 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n"
        );
        let resp = Response {
            status: 200,
            body: br#"{"c":2,"msg":[{"id":"x1","channel":"a","data":{"seq":4}},{"id":"x2","channel":"a","data":"{\"seq\":5}"}],"cursor":"x2"}"#.to_vec(),
            ..Response::default()
        };
        let mut seqs = Vec::new();
        let a = read_answer(Target::Pnsd, &resp, &mut cur, &mut seqs);
        assert_eq!(a.messages, 2);
        assert!(!a.reset);
        assert_eq!(seqs, vec![4, 5]);
        assert!(!looks_empty(Target::Pnsd, &resp));
        let expired = Response {
            status: 200,
            body: br#"{"c":0,"msg":[],"cursor":"x2"}"#.to_vec(),
            ..Response::default()
        };
        assert!(looks_empty(Target::Pnsd, &expired));
        assert_eq!(cur.token, "x2");
        poll_request(&o, "a", &cur, &mut out);
        assert!(out.starts_with(b"GET /pns/poll?channel=a&cursor=x2&hold=120 "));
    }

    #[test]
    fn nchan_poll_and_answer() {
        let o = opts("--target nchan --addr 127.0.0.1:80 --publish-url http://127.0.0.1:80/pub");
        let mut cur = Cursor::default();
        let resp = Response {
            status: 200,
            etag: Some("\"0\"".into()),
            last_modified: Some("Thu, 01 Jan 2026 00:00:00 GMT".into()),
            body: br#"{"seq":0}"#.to_vec(),
            ..Response::default()
        };
        let mut seqs = Vec::new();
        let a = read_answer(Target::Nchan, &resp, &mut cur, &mut seqs);
        assert_eq!((a.messages, seqs), (1, vec![0]));
        let mut out = Vec::new();
        poll_request(&o, "c", &cur, &mut out);
        let text = String::from_utf8(out.clone()).unwrap_or_default();
        assert!(text.contains("If-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT\r\n"));
        assert!(text.contains("If-None-Match: \"0\"\r\n"));
        out.clear();
        publish_request(&o, "c", "{\"seq\":1}", &mut out);
        assert!(out.starts_with(b"POST /pub/c HTTP/1.1\r\n"));
        assert!(out.ends_with(b"Content-Length: 9\r\n\r\n{\"seq\":1}"));
        assert_eq!(
            parse_nchan_subscribers(b"{\"messages\":0,\"subscribers\":7}"),
            Some(7)
        );
        assert_eq!(
            parse_nchan_subscribers(b"queued messages: 0\r\nsubscribers: 3\r\n"),
            Some(3)
        );
    }

    #[test]
    fn pnsd_publish_line() {
        let o = opts("--addr 127.0.0.1:80");
        let mut out = Vec::new();
        publish_request(&o, "ch", "{\"seq\":1}", &mut out);
        assert_eq!(out, b"{\"channel\":\"ch\",\"data\":{\"seq\":1}}\n");
    }
}

mod report_tests {
    use crate::report::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn row_and_json_of_partial_run() {
        let r = Results {
            target: "pnsd".into(),
            label: "pnsd".into(),
            conns: 10,
            bytes_per_parked: Some(96.4),
            ..Results::default()
        };
        assert_eq!(
            r.row(),
            "| pnsd | 10 | 96 | - | - | - | - | - | - | - | - | - | - |"
        );
        let j = r.json();
        assert!(j["fanout_ms"].is_null());
        assert!(j["idle_cpu_s"].is_null());
        assert_eq!(j["conns"], 10);
    }

    #[test]
    fn row_and_json_of_cpu_figures() {
        let r = Results {
            label: "x".into(),
            conns: 3,
            fanout: Some(Fanout {
                p50: 1.0,
                p99: 2.0,
                max: 3.0,
                client_floor_ms: Some(4.25),
                server_cpu_ms: Some(80.0),
                ..Fanout::default()
            }),
            repoll: Some(Repoll {
                per_s: 1000.0,
                msgs_per_s: 5000.0,
                seconds: 10.0,
                server_cpu_s: Some(0.05),
                ..Repoll::default()
            }),
            ..Results::default()
        };
        assert_eq!(
            r.row(),
            "| x | 3 | - | 1.0 | 2.0 | 3.0 | 4.2 | 80 | 1000 | 5000 | 5.00 | - | - |"
        );
        let j = r.json();
        assert_eq!(j["fanout_ms"]["client_floor"], 4.25);
        assert_eq!(j["repoll_server_cpu_s"], 0.05);
        let none = Repoll {
            server_cpu_s: Some(1.0),
            ..Repoll::default()
        };
        assert_eq!(none.server_cpu_per_answer_us(), None);
    }

    /// The JSON `latencies` of fan-out, as `benches/charts.sh` reads it: sorted, `samples` long,
    /// and `p50`/`p99`/`max` are its nearest-rank percentiles.
    pub fn check_latency_cdf(j: &serde_json::Value) {
        let f = &j["fanout_ms"];
        let l: Vec<f64> = f["latencies"]
            .as_array()
            .unwrap_or_else(|| panic!("no fanout_ms.latencies in {f}"))
            .iter()
            .map(|v| {
                v.as_f64()
                    .unwrap_or_else(|| panic!("latency {v} is not a number"))
            })
            .collect();
        assert_eq!(Some(l.len() as u64), f["samples"].as_u64());
        assert!(l.windows(2).all(|w| w[0] <= w[1]), "not sorted: {l:?}");
        for (q, key) in [(0.5, "p50"), (0.99, "p99"), (1.0, "max")] {
            assert_eq!(Some(percentile(&l, q)), f[key].as_f64(), "{key}");
        }
    }

    #[test]
    fn fanout_latencies_are_the_cdf_behind_the_percentiles() {
        // 1..=200 ms in a scrambled order (7 is coprime with 200), with sub-microsecond noise.
        let raw: Vec<f64> = (0..200u32)
            .map(|i| f64::from((i * 7) % 200 + 1) + 0.000_4)
            .collect();
        let f = Fanout::from_latencies(raw);
        assert_eq!((f.samples, f.p50, f.p99, f.max), (200, 100.0, 198.0, 200.0));
        assert_eq!(f.latencies_ms.first(), Some(&1.0));
        let r = Results {
            fanout: Some(Fanout { rounds: 2, ..f }),
            ..Results::default()
        };
        let j = r.json();
        check_latency_cdf(&j);
        assert_eq!(j["fanout_ms"]["latencies"][199], 200.0);
        assert_eq!(
            Fanout::from_latencies(vec![2.345_6, 0.5]).latencies_ms,
            vec![0.5, 2.346]
        );
    }
}

mod order_tests {
    use crate::order::OrderCheck;

    #[test]
    fn order_check_counts_gaps_repeats_and_resets() {
        let mut c = OrderCheck::new(2);
        c.check(0, false, &[0, 1, 2]);
        c.check(0, false, &[3]);
        assert_eq!((c.gaps, c.disorder), (0, 0));
        c.check(0, false, &[6]);
        assert_eq!((c.gaps, c.skipped), (1, 2));
        c.check(0, false, &[6, 7]);
        assert_eq!(c.disorder, 1);
        c.check(1, true, &[40, 41]);
        assert_eq!((c.gaps, c.resets), (1, 1));
        assert_eq!(c.expected, vec![8, 42]);
        c.check(1, false, &[41]);
        assert_eq!(c.disorder, 2);
    }
}

/// The reactor and the publisher against tiny in-process servers on loopback.
mod socket_tests {
    use crate::publisher::Publisher;
    use crate::reactor::{Completion, Reactor};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{IpAddr, TcpListener};
    use std::os::unix::net::UnixListener;
    use std::time::{Duration, Instant};

    /// Turns `r` until `want` answers arrived or a generous deadline passes.
    fn collect(r: &mut Reactor, want: usize) -> Vec<Completion> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            r.turn(Duration::from_millis(20), &mut out)
                .unwrap_or_else(|e| panic!("turn: {e}"));
        }
        out
    }

    /// Serves `conns` connections, each on its own thread: each request gets "ok"; a request
    /// for /close gets "bye" and the connection is closed. Returns the peers' addresses.
    fn serve(listener: TcpListener, conns: usize) -> std::thread::JoinHandle<Vec<IpAddr>> {
        std::thread::spawn(move || {
            let mut peers = Vec::new();
            let mut handlers = Vec::new();
            for _ in 0..conns {
                let Ok((s, peer)) = listener.accept() else {
                    break;
                };
                peers.push(peer.ip());
                handlers.push(std::thread::spawn(move || answer_requests(s)));
            }
            for h in handlers {
                let _ = h.join();
            }
            peers
        })
    }

    fn answer_requests(s: std::net::TcpStream) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(s);
        // At most 4 requests per connection in these tests.
        for _ in 0..4 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let close = line.contains("/close");
            let mut header = String::new();
            while reader.read_line(&mut header).unwrap_or(0) > 2 {
                header.clear();
            }
            let answer: &[u8] = if close {
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            if reader.get_mut().write_all(answer).is_err() || close {
                return;
            }
        }
    }

    #[test]
    fn requests_answers_keep_alive_and_reconnect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        // Three clients; the first asks /close, so it needs a second connection: 4 in all.
        let server = serve(listener, 4);
        let mut r = Reactor::new(&[addr], 3).unwrap_or_else(|e| panic!("{e}"));
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
        for i in 0..3 {
            let path = if i == 0 { "/close" } else { "/a" };
            r.send(i, &get(path)).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut first = collect(&mut r, 3);
        first.sort_by_key(|c| c.client);
        let bodies: Vec<&[u8]> = first.iter().map(|c| c.response.body.as_slice()).collect();
        assert_eq!(bodies, vec![&b"bye"[..], b"ok", b"ok"]);
        assert_eq!(r.awaiting(), 0);
        // Second round: clients 1 and 2 reuse their connections, client 0 reconnects.
        for i in 0..3 {
            r.send(i, &get("/b")).unwrap_or_else(|e| panic!("{e}"));
        }
        let second = collect(&mut r, 3);
        assert_eq!(second.len(), 3);
        assert!(second.iter().all(|c| c.response.body == b"ok"));
        assert_eq!(r.counters.reconnects, 0);
        drop(r);
        let peers = server.join().unwrap_or_else(|_| panic!("server thread"));
        assert_eq!(peers.len(), 4);
        // Round-robin source addresses, never the server's own 127.0.0.1.
        assert!(peers.iter().all(
            |p| matches!(p, IpAddr::V4(v) if v.octets()[..3] == [127, 0, 0] && v.octets()[3] >= 2)
        ));
        assert!(peers[0] != peers[1]);
    }

    #[test]
    fn unix_publisher_counts_pipelined_acks() {
        let dir = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("pub.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap_or_else(|e| panic!("{e}"));
        let server = std::thread::spawn(move || {
            let Ok((s, _)) = listener.accept() else {
                return 0;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut out = s.try_clone().unwrap_or_else(|e| panic!("{e}"));
            let mut lines = 0;
            // Acks every line until the client hangs up (it sends 100, the last one bad).
            for line in BufReader::new(s).lines().take(1000) {
                let Ok(line) = line else {
                    break;
                };
                lines += 1;
                let ack: &[u8] = if line.contains("bad") {
                    b"{\"ok\":false,\"error\":\"bad\"}\n"
                } else {
                    b"{\"ok\":true,\"id\":\"x\"}\n"
                };
                if out.write_all(ack).is_err() {
                    break;
                }
            }
            lines
        });
        let mut r = Reactor::new(
            &["127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!())],
            0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = Publisher::unix(r.registry(), &path, 16).unwrap_or_else(|e| panic!("{e}"));
        r.publisher = Some(p);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0;
        let mut out = Vec::new();
        loop {
            let Some(p) = r.publisher.as_mut() else {
                unreachable!()
            };
            if p.acked + p.failed == 100 || Instant::now() > deadline {
                break;
            }
            while sent < 100 && p.outstanding() < 16 {
                let line = if sent == 99 {
                    "bad\n"
                } else {
                    "{\"channel\":\"c\",\"data\":1}\n"
                };
                p.send(0, line.as_bytes().to_vec());
                sent += 1;
            }
            r.turn(Duration::from_millis(20), &mut out)
                .unwrap_or_else(|e| panic!("turn: {e}"));
        }
        let Some(p) = r.publisher.as_ref() else {
            unreachable!()
        };
        assert_eq!((p.sent, p.acked, p.failed), (100, 99, 1));
        assert!(p.last_error.as_deref().unwrap_or("").contains("bad"));
        drop(r);
        assert_eq!(server.join().unwrap_or(0), 100);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn http_publisher_resends_pipelined_requests_after_a_clean_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        // Like nginx's keepalive_requests: answer 3 requests per connection, the third with
        // Connection: close, dropping whatever was pipelined behind it.
        let server = std::thread::spawn(move || {
            let mut answered = 0;
            for _ in 0..10 {
                let Ok((s, _)) = listener.accept() else {
                    break;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(s);
                for k in 0..3 {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let mut len = 0;
                    let mut header = String::new();
                    while reader.read_line(&mut header).unwrap_or(0) > 2 {
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        header.clear();
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        break;
                    }
                    answered += 1;
                    let answer: &[u8] = if k == 2 {
                        b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
                    };
                    if reader.get_mut().write_all(answer).is_err() {
                        break;
                    }
                }
                // Lingering close, as nginx does: closing with pipelined requests unread would
                // send a reset that can destroy the last answer before the client reads it.
                let _ = reader.get_ref().shutdown(std::net::Shutdown::Write);
                let mut sink = [0u8; 4096];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                if answered >= 10 {
                    break;
                }
            }
            answered
        });
        let mut r = Reactor::new(&[addr], 0).unwrap_or_else(|e| panic!("{e}"));
        let p = Publisher::http(r.registry(), addr, 1, 4).unwrap_or_else(|e| panic!("{e}"));
        r.publisher = Some(p);
        if let Some(p) = r.publisher.as_mut() {
            for _ in 0..10 {
                p.send(
                    0,
                    b"POST /pub/c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1".to_vec(),
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        while r.publisher.as_ref().is_some_and(|p| p.outstanding() > 0) && Instant::now() < deadline
        {
            r.turn(Duration::from_millis(20), &mut out)
                .unwrap_or_else(|e| panic!("turn: {e}"));
        }
        let Some(p) = r.publisher.as_ref() else {
            unreachable!()
        };
        assert_eq!((p.acked, p.failed), (10, 0));
        drop(r);
        assert_eq!(server.join().unwrap_or(0), 10);
    }
}

/// The scenarios end to end against a real pnsd (the binary this package builds), with counts
/// small enough for `cargo test`: what `peers.sh` runs, checked for correctness, never for speed.
mod against_pnsd {
    use crate::args::Options;
    use crate::report::Results;
    use crate::scenarios;
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;
    use std::process::{Child, ChildStdout, Command as Process, Stdio};

    /// A pnsd child process, killed and its directory removed on drop.
    struct Pnsd {
        child: Child,
        /// Kept open so that pnsd never writes to a closed pipe.
        _stdout: Option<BufReader<ChildStdout>>,
        dir: PathBuf,
        addr: String,
    }

    impl Pnsd {
        fn start(name: &str) -> Pnsd {
            let dir =
                std::env::temp_dir().join(format!("loadgen-e2e-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
            let mut child = Process::new(env!("CARGO_BIN_EXE_pnsd"))
                .args([
                    "--threads",
                    "2",
                    "--listen",
                    "127.0.0.1:0",
                    "--publish-socket",
                ])
                .arg(dir.join("pnsd.sock"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start pnsd: {e}"));
            let mut line = String::new();
            let mut stdout = child.stdout.take().map(BufReader::new);
            if let Some(out) = stdout.as_mut() {
                let _ = out.read_line(&mut line);
            }
            // "pnsd listening on http://127.0.0.1:PORT publish=... threads=2"
            let addr = line
                .split("http://")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no address in pnsd's start-up line {line:?}"))
                .to_string();
            Pnsd {
                child,
                _stdout: stdout,
                dir,
                addr,
            }
        }

        fn options(&self, extra: &str) -> Options {
            let line = format!(
                "--target pnsd --addr {} --publish-socket {} --pid {} {extra}",
                self.addr,
                self.dir.join("pnsd.sock").display(),
                self.child.id()
            );
            crate::opts(&line)
        }
    }

    impl Drop for Pnsd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn every_scenario_runs_and_checks_out() {
        let server = Pnsd::start("all");
        let o = server.options(
            "--conns 300 --rounds 2 --repoll-clients 40 --client-threads 2 --seconds 1 \
             --messages 2000",
        );
        let mut res = Results::default();
        let mut crowd = scenarios::density(&o, &mut res).unwrap_or_else(|e| panic!("{e}"));
        assert!(res.bytes_per_parked.is_some());
        scenarios::idle(&o, &mut crowd, &mut res).unwrap_or_else(|e| panic!("{e}"));
        assert!(res.idle_cpu_s.is_some());
        scenarios::fanout(&o, &mut crowd, &mut res).unwrap_or_else(|e| panic!("{e}"));
        let f = res
            .fanout
            .clone()
            .unwrap_or_else(|| panic!("no fan-out result"));
        assert_eq!((f.samples, f.missing), (300 * 2, 0));
        assert!(f.p50 <= f.p99 && f.p99 <= f.max);
        assert!(f.client_floor_ms.is_some() && f.server_cpu_ms.is_some());
        crate::report_tests::check_latency_cdf(&res.json());
        drop(crowd);
        scenarios::repoll(&o, &mut res).unwrap_or_else(|e| panic!("{e}"));
        let r = res
            .repoll
            .clone()
            .unwrap_or_else(|| panic!("no re-poll result"));
        assert_eq!((r.violations(), r.resets, r.client_threads), (0, 0, 2));
        assert!(r.published > 0 && r.per_s > 0.0 && r.msgs_per_s >= r.per_s);
        assert!(r.server_cpu_s.is_some());
        scenarios::ingest(&o, &mut res).unwrap_or_else(|e| panic!("{e}"));
        let i = res
            .ingest
            .clone()
            .unwrap_or_else(|| panic!("no ingest result"));
        assert_eq!((i.messages, i.failed), (2000, 0));
        assert_eq!(res.reconnects, 0);
    }

    #[test]
    fn the_sse_density_scenario_runs_and_every_stream_gets_the_event() {
        let server = Pnsd::start("sse");
        let o = server.options("--scenario sse-density --conns 300");
        let mut res = Results::default();
        crate::sse::sse_density(&o, &mut res).unwrap_or_else(|e| panic!("{e}"));
        let s = res
            .sse
            .clone()
            .unwrap_or_else(|| panic!("no sse-density result"));
        assert_eq!((s.streams, s.received), (300, 300));
        assert!(s.bytes_per_stream.is_some() && s.pss_streams_kb.is_some());
        let j = res.json();
        assert_eq!(
            j["bytes_per_sse_stream"],
            serde_json::json!(s.bytes_per_stream)
        );
        assert_eq!(j["sse_density"]["received"], 300);
    }

    #[test]
    fn the_upgrade_scenario_runs_and_checks_out() {
        let server = Pnsd::start("upgrade");
        let o = server.options(
            "--scenario upgrade --upgrades 2 --conns 200 --repoll-clients 20 --client-threads 2 \
             --seconds 2",
        );
        let mut res = Results::default();
        let run = crate::upgrade::upgrade(&o, &mut res);
        // The last process is not this test's child: end it whatever happened.
        for h in &res.upgrades {
            // SAFETY: kill(2) of a server process this test started (through its upgrades).
            unsafe { libc::kill(h.pid as libc::pid_t, libc::SIGKILL) };
        }
        run.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(res.upgrades.len(), 2);
        assert_eq!(
            res.upgrades
                .iter()
                .map(|h| h.generation)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(res.upgrades.iter().all(|h| h.serving_ms <= h.gone_ms));
        let r = res
            .repoll
            .clone()
            .unwrap_or_else(|| panic!("no re-poll result"));
        assert_eq!((r.violations(), r.resets), (0, 0));
        assert!(r.published > 0);
        let f = res
            .fanout
            .clone()
            .unwrap_or_else(|| panic!("no fan-out result"));
        assert_eq!((f.samples, f.missing), (200, 0));
        assert_eq!(res.reconnects, 0);
    }
}
