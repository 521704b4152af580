//! Results of one run: the markdown table row and the JSON object of `README.md` beside this file.
//!
//! Invariants: a scenario that did not run leaves its fields `None`, printed as `-` in the
//! table and `null` in JSON; the JSON keys named by the contract are always present.

use serde_json::{json, Value};

/// Fan-out latency summary, milliseconds from just before the publish to each full answer.
#[derive(Clone, Debug, Default)]
pub struct Fanout {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub rounds: usize,
    pub samples: usize,
    /// Answers that did not carry the published message.
    pub missing: u64,
    /// The load generator's own CPU time per round (publish to last answer), ms: when close to
    /// the round's duration, the client and not the server set the pace.
    pub client_cpu_ms: f64,
    /// The server's CPU time per round (with `--pid`), ms; /proc counts in 10 ms ticks.
    pub server_cpu_ms: Option<f64>,
    /// Time for this load generator to read one round's answers already queued whole in its
    /// sockets: no server's fan-out can look faster here.
    pub client_floor_ms: Option<f64>,
    /// The load generator's CPU for that read, ms.
    pub client_floor_cpu_ms: Option<f64>,
    /// Every subscriber's latency of every round, ms to the microsecond, sorted ascending
    /// (`samples` values): the CDF behind `p50`, `p99` and `max`, which are its nearest-rank
    /// percentiles. `benches/charts.sh` draws it.
    pub latencies_ms: Vec<f64>,
}

impl Fanout {
    /// The latency part of a summary from every subscriber's latency (ms, any order): rounded
    /// to the microsecond (the clock's useful resolution here, and half the JSON of full
    /// precision), sorted, and the percentiles taken from exactly those values.
    pub fn from_latencies(mut latencies_ms: Vec<f64>) -> Fanout {
        for l in latencies_ms.iter_mut() {
            *l = (*l * 1000.0).round() / 1000.0;
        }
        latencies_ms.sort_by(f64::total_cmp);
        Fanout {
            p50: percentile(&latencies_ms, 0.5),
            p99: percentile(&latencies_ms, 0.99),
            max: percentile(&latencies_ms, 1.0),
            samples: latencies_ms.len(),
            latencies_ms,
            ..Fanout::default()
        }
    }
}

/// Re-poll throughput and the order check.
#[derive(Clone, Debug, Default)]
pub struct Repoll {
    pub per_s: f64,
    pub msgs_per_s: f64,
    pub clients: usize,
    /// Load-generator event loops the clients were spread over.
    pub client_threads: usize,
    pub seconds: f64,
    pub published: u64,
    /// Answers that skipped messages without declaring a reset.
    pub gaps: u64,
    /// Messages skipped by those gaps.
    pub skipped: u64,
    /// Messages repeated or out of order.
    pub disorder: u64,
    /// Clients that never saw their channel's last message.
    pub behind: u64,
    /// Answers that declared a reset (pnsd `"reset":true`).
    pub resets: u64,
    /// Server CPU seconds over the publishing window (with `--pid`).
    pub server_cpu_s: Option<f64>,
    /// The load generator's own CPU seconds over the same window: near `seconds` means the
    /// client, not the server, set the pace.
    pub client_cpu_s: f64,
}

impl Repoll {
    /// Unannounced gaps, repeats or reorderings, and clients never caught up: should be 0.
    pub fn violations(&self) -> u64 {
        self.gaps + self.disorder + self.behind
    }

    /// Server CPU per answer over the window, µs (with `--pid`).
    pub fn server_cpu_per_answer_us(&self) -> Option<f64> {
        let answers = self.per_s * self.seconds;
        self.server_cpu_s
            .filter(|_| answers > 0.0)
            .map(|c| c * 1e6 / answers)
    }
}

/// Publish ingest rate.
#[derive(Clone, Debug, Default)]
pub struct Ingest {
    pub msgs_per_s: f64,
    pub messages: u64,
    pub failed: u64,
}

/// The sse-density scenario: idle Server-Sent Events streams and the one event each received.
#[derive(Clone, Debug, Default)]
pub struct SseDensity {
    pub streams: usize,
    pub pss_idle_kb: Option<u64>,
    pub pss_streams_kb: Option<u64>,
    /// Server PSS growth per idle stream, bytes (with `--pid`).
    pub bytes_per_stream: Option<f64>,
    /// Streams that received the published event (all of them, or the scenario failed).
    pub received: usize,
    /// From just before the publish until the last stream had the event, ms.
    pub event_ms: f64,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub target: String,
    pub label: String,
    pub conns: usize,
    pub pss_idle_kb: Option<u64>,
    pub pss_parked_kb: Option<u64>,
    pub bytes_per_parked: Option<f64>,
    /// Kernel slab growth over the density step, kB (both ends of every loopback connection).
    pub kernel_slab_kb: Option<i64>,
    /// Growth of /proc/net/sockstat TCP "mem" (pages of socket buffers) over the density step.
    pub kernel_tcp_mem_pages: Option<i64>,
    pub fanout: Option<Fanout>,
    pub repoll: Option<Repoll>,
    pub ingest: Option<Ingest>,
    pub idle_cpu_s: Option<f64>,
    pub idle_seconds: Option<u64>,
    /// Connections the load generator had to re-open (server closed or refused them).
    pub reconnects: u64,
    /// The upgrade scenario's hand-overs, in order.
    pub upgrades: Vec<Handover>,
    pub sse: Option<SseDensity>,
}

/// One upgrade of the upgrade scenario.
#[derive(Debug, Clone, Default)]
pub struct Handover {
    /// From the `upgrade` request to the new process's answer (written once it serves).
    pub serving_ms: f64,
    /// From the request until the old process had exited.
    pub gone_ms: f64,
    pub pid: u64,
    pub generation: u64,
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=1).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The table header and separator lines.
pub const HEADER: &str = "| server | parked | userland B/parked | fanout p50 ms | p99 ms | max ms | client floor ms | server CPU ms/fanout | repoll resp/s | repoll msg/s | server CPU us/resp | ingest msg/s | idle CPU s/60s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

fn cell<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

impl Results {
    /// One markdown table row.
    pub fn row(&self) -> String {
        let f = self.fanout.as_ref();
        let idle = match (self.idle_cpu_s, self.idle_seconds) {
            (Some(c), Some(60)) | (Some(c), None) => format!("{c:.2}"),
            (Some(c), Some(s)) => format!("{c:.2} (over {s} s)"),
            _ => "-".to_string(),
        };
        let r = self.repoll.as_ref();
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.label,
            self.conns,
            cell(self.bytes_per_parked, |b| format!("{b:.0}")),
            cell(f, |f| format!("{:.1}", f.p50)),
            cell(f, |f| format!("{:.1}", f.p99)),
            cell(f, |f| format!("{:.1}", f.max)),
            cell(f.and_then(|f| f.client_floor_ms), |m| format!("{m:.1}")),
            cell(f.and_then(|f| f.server_cpu_ms), |m| format!("{m:.0}")),
            cell(r, |r| format!("{:.0}", r.per_s)),
            cell(r, |r| format!("{:.0}", r.msgs_per_s)),
            cell(r.and_then(|r| r.server_cpu_per_answer_us()), |u| format!(
                "{u:.2}"
            )),
            cell(self.ingest.as_ref(), |i| format!("{:.0}", i.msgs_per_s)),
            idle,
        )
    }

    /// The JSON object: the contract's keys, then extras.
    pub fn json(&self) -> Value {
        json!({
            "target": self.target,
            "label": self.label,
            "conns": self.conns,
            "pss_idle_kb": self.pss_idle_kb,
            "pss_parked_kb": self.pss_parked_kb,
            "bytes_per_parked": self.bytes_per_parked,
            "fanout_ms": self.fanout.as_ref().map(|f| json!({
                "p50": f.p50, "p99": f.p99, "max": f.max, "rounds": f.rounds,
                "samples": f.samples, "missing": f.missing, "client_cpu_ms": f.client_cpu_ms,
                "server_cpu_ms": f.server_cpu_ms, "client_floor": f.client_floor_ms, "client_floor_cpu_ms": f.client_floor_cpu_ms,
                "latencies": f.latencies_ms,
            })),
            "repoll_per_s": self.repoll.as_ref().map(|r| r.per_s),
            "repoll_msgs_per_s": self.repoll.as_ref().map(|r| r.msgs_per_s),
            "ingest_msgs_per_s": self.ingest.as_ref().map(|i| i.msgs_per_s),
            "idle_cpu_s": self.idle_cpu_s,
            "upgrades": self.upgrades.iter().map(|h| json!({
                "serving_ms": h.serving_ms, "gone_ms": h.gone_ms, "pid": h.pid,
                "generation": h.generation,
            })).collect::<Vec<_>>(),
            "idle_seconds": self.idle_seconds,
            "repoll_violations": self.repoll.as_ref().map(|r| r.violations()),
            "repoll_resets": self.repoll.as_ref().map(|r| r.resets),
            "repoll_gaps": self.repoll.as_ref().map(|r| r.gaps),
            "repoll_skipped": self.repoll.as_ref().map(|r| r.skipped),
            "repoll_disorder": self.repoll.as_ref().map(|r| r.disorder),
            "repoll_behind": self.repoll.as_ref().map(|r| r.behind),
            "repoll_clients": self.repoll.as_ref().map(|r| r.clients),
            "repoll_client_threads": self.repoll.as_ref().map(|r| r.client_threads),
            "repoll_seconds": self.repoll.as_ref().map(|r| r.seconds),
            "repoll_published": self.repoll.as_ref().map(|r| r.published),
            "repoll_server_cpu_s": self.repoll.as_ref().and_then(|r| r.server_cpu_s),
            "repoll_client_cpu_s": self.repoll.as_ref().map(|r| r.client_cpu_s),
            "ingest_messages": self.ingest.as_ref().map(|i| i.messages),
            "ingest_failed": self.ingest.as_ref().map(|i| i.failed),
            "kernel_slab_kb_delta": self.kernel_slab_kb,
            "kernel_slab_bytes_per_conn": self.kernel_slab_kb.map(|k| k as f64 * 1024.0 / self.conns as f64),
            "kernel_tcp_mem_pages_delta": self.kernel_tcp_mem_pages,
            "reconnects": self.reconnects,
            "bytes_per_sse_stream": self.sse.as_ref().and_then(|s| s.bytes_per_stream),
            "sse_density": self.sse.as_ref().map(|s| json!({
                "streams": s.streams, "pss_idle_kb": s.pss_idle_kb,
                "pss_streams_kb": s.pss_streams_kb, "bytes_per_stream": s.bytes_per_stream,
                "received": s.received, "event_ms": s.event_ms,
            })),
        })
    }
}
