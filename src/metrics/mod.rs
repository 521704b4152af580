//! `/metrics`: the server's figures in the Prometheus text format (version 0.0.4), encoded by
//! the `prometheus-client` crate from a snapshot taken at scrape time, and served by one small
//! thread of its own (`listener`).
//!
//! Where the figures come from, and why a scrape cannot hold up a reactor or a publish:
//! - reactors count into their own `gauges::ReactorGauges` (gauges, `delivered`, and the
//!   `ReactorTally` of answers, errors, refusals, accept pauses and fan-out times): relaxed
//!   `fetch_add`s on the reactor's own cache lines, nothing allocated, nothing locked;
//! - `ingest` mirrors the store's O(1) figures (channels, messages, published) into
//!   `hub.counters.store` while it holds the write lock anyway;
//! - the publish thread counts its error lines in `hub.counters.publish_errors`;
//! - the scrape (`Snapshot::take`) only loads those atomics, reads `/proc/self`, and asks a
//!   registered fleet link for its figures: it takes no lock a reactor or `ingest` takes.
//!
//! `pnsd_fanout_seconds` is, per reactor and per publish wake-up (`Command::Published`, which
//! covers the messages of one ingest slice): from the moment `ingest` accepted the slice's first
//! message to the moment that reactor has handed the last answer of the wake-up to the kernel
//! (its `write` returned; a client whose socket buffer was full finishes later and is not
//! waited for). A wake-up that answered nobody on a reactor is not observed there.
//!
//! Invariants: the output always passes `promtool check metrics`; the fleet figures
//! (`pnsd_redis_*`) appear exactly when fleet mode registered a `FleetLink` in `hub.fleet`.

mod listener;
mod process;

pub use crate::gauges::tally::{
    Outcome, ReactorTally, TallySnapshot, ERROR_STATUSES, FANOUT_BOUNDS_US,
};
pub use listener::{MetricsLink, MetricsServer, MAX_SCRAPERS, PATH, SCRAPE_DEADLINE};
pub use process::Process;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::fleet::FeedState;
use crate::hub::Hub;

/// The `Content-Type` of a scrape's answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The fleet link's figures, as fleet mode provides them to `/metrics` (register one in
/// `hub.fleet`). Called from the metrics thread only.
pub trait FleetLink: Send + Sync + Debug {
    fn link_figures(&self) -> LinkFigures;
}

/// See [`FleetLink`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFigures {
    /// `pnsd_redis_connected`: the feed is connected with its epoch checked.
    pub connected: bool,
    /// `pnsd_redis_lag`: log entries not applied here yet (as of the feed's last read).
    pub lag: u64,
    /// `pnsd_redis_reconnects_total`: successful connects after the first.
    pub reconnects: u64,
}

/// The feed's shared state is the fleet link's provider.
impl FleetLink for FeedState {
    fn link_figures(&self) -> LinkFigures {
        let s = self.stats();
        LinkFigures {
            connected: s.connected,
            lag: s.lag,
            reconnects: s.reconnects,
        }
    }
}

/// Everything one scrape reports, loaded from the hub's atomics and `/proc/self`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub connections: u64,
    pub parked: u64,
    pub sse_streams: u64,
    pub waiting_channels: u64,
    pub channels: u64,
    pub messages: u64,
    pub published: u64,
    pub delivered: u64,
    pub publish_errors: u64,
    pub threads: u64,
    pub max_connections: u64,
    pub tally: TallySnapshot,
    pub process: Process,
    pub fleet: Option<LinkFigures>,
}

impl Snapshot {
    /// Loads the figures (see the module documentation: no lock a reactor takes).
    pub fn take(hub: &Hub) -> Snapshot {
        let get = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed) as u64;
        let mut s = Snapshot {
            connections: get(&hub.counters.connections),
            channels: get(&hub.counters.store.channels),
            messages: get(&hub.counters.store.messages),
            published: hub.counters.store.published.load(Ordering::Relaxed),
            delivered: hub.delivered(),
            publish_errors: hub.counters.publish_errors.load(Ordering::Relaxed),
            threads: hub.gauges.len() as u64,
            max_connections: hub.max_connections as u64,
            process: Process::read(),
            fleet: hub.fleet.get().map(|f| f.link_figures()),
            ..Snapshot::default()
        };
        for g in hub.gauges.iter() {
            s.parked += get(&g.parked);
            s.sse_streams += get(&g.streams);
            s.waiting_channels += get(&g.waiting_channels);
            g.tally.add_to(&mut s.tally);
        }
        s
    }

    /// The Prometheus text of this snapshot.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// One metric's value for the encoder.
enum Value<'a> {
    Gauge(u64),
    Counter(u64),
    CounterF(f64),
    /// A counter per label value: (label name, [(value, count)]).
    Labelled(&'static str, &'a [(String, u64)]),
    /// Non-cumulative bucket counts by upper bound (s), sum (s), count.
    Histogram(&'a [(f64, u64)], f64, u64),
}

impl Debug for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Value")
    }
}

impl EncodeMetric for Value<'_> {
    fn encode(&self, mut e: MetricEncoder) -> Result<(), std::fmt::Error> {
        let none: Option<&Exemplar<NoLabelSet, u64>> = None;
        match self {
            Value::Gauge(v) => e.encode_gauge(v),
            Value::Counter(v) => e.encode_counter(v, none),
            Value::CounterF(v) => e.encode_counter::<NoLabelSet, f64, u64>(v, None),
            Value::Labelled(name, rows) => {
                for (label, v) in rows.iter() {
                    let labels = [(*name, label.as_str())];
                    e.encode_family(&labels)?.encode_counter(v, none)?;
                }
                Ok(())
            }
            Value::Histogram(buckets, sum, count) => {
                let none: Option<&HashMap<usize, Exemplar<NoLabelSet, f64>>> = None;
                e.encode_histogram(*sum, *count, buckets, none)
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Value::Gauge(_) => MetricType::Gauge,
            Value::Counter(_) | Value::CounterF(_) | Value::Labelled(..) => MetricType::Counter,
            Value::Histogram(..) => MetricType::Histogram,
        }
    }
}

/// Counters are named without `_total` here: the encoder appends it.
impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut put = |name: &str, help: &str, v: Value<'_>| -> Result<(), std::fmt::Error> {
            let m = enc.encode_descriptor(name, help, None, v.metric_type())?;
            v.encode(m)
        };
        use Value::*;
        put(
            "pnsd_connections",
            "HTTP connections held.",
            Gauge(self.connections),
        )?;
        put(
            "pnsd_max_connections",
            "HTTP connections held at most (--max-connections).",
            Gauge(self.max_connections),
        )?;
        put(
            "pnsd_parked_polls",
            "Polls parked, waiting for a message.",
            Gauge(self.parked),
        )?;
        put(
            "pnsd_sse_streams",
            "Server-Sent-Events streams open.",
            Gauge(self.sse_streams),
        )?;
        put(
            "pnsd_channels",
            "Channels holding at least one message.",
            Gauge(self.channels),
        )?;
        put(
            "pnsd_waiting_channels",
            "Channels with a parked poll, summed over reactors (a channel waited on from two reactors counts twice).",
            Gauge(self.waiting_channels),
        )?;
        put(
            "pnsd_buffered_messages",
            "Messages held in channel buffers, each once.",
            Gauge(self.messages),
        )?;
        put("pnsd_reactors", "Reactor threads.", Gauge(self.threads))?;
        put(
            "pnsd_published",
            "Messages accepted.",
            Counter(self.published),
        )?;
        put(
            "pnsd_delivered",
            "Poll answers carrying at least one message handed to the kernel.",
            Counter(self.delivered),
        )?;
        let answers: Vec<(String, u64)> = Outcome::ALL
            .iter()
            .map(|o| (o.label().to_string(), self.tally.answers[*o as usize]))
            .collect();
        put(
            "pnsd_answers",
            "Poll answers by outcome: message, timeout (empty), reset, error (any 4xx/5xx).",
            Labelled("outcome", &answers),
        )?;
        let errors: Vec<(String, u64)> = self
            .tally
            .errors
            .iter()
            .enumerate()
            .map(|(i, n)| (TallySnapshot::status_label(i), *n))
            .collect();
        put(
            "pnsd_http_errors",
            "HTTP error responses by status.",
            Labelled("status", &errors),
        )?;
        put(
            "pnsd_connections_refused",
            "Connections answered 503 and closed at --max-connections.",
            Counter(self.tally.refused),
        )?;
        put(
            "pnsd_accept_pauses",
            "Times a reactor paused accepting for want of file descriptors.",
            Counter(self.tally.accept_pauses),
        )?;
        put(
            "pnsd_publish_errors",
            "Publish socket lines answered with an error.",
            Counter(self.publish_errors),
        )?;
        let buckets: Vec<(f64, u64)> = FANOUT_BOUNDS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(self.tally.fanout.iter().copied())
            .collect();
        put(
            "pnsd_fanout_seconds",
            "Per reactor and publish wake-up: publish accepted to the last answer written.",
            Histogram(
                &buckets,
                self.tally.fanout_sum_us as f64 / 1e6,
                self.tally.fanout_count,
            ),
        )?;
        if let Some(f) = self.fleet {
            put(
                "pnsd_redis_connected",
                "1 when the fleet feed is connected to Redis.",
                Gauge(u64::from(f.connected)),
            )?;
            put(
                "pnsd_redis_lag",
                "Fleet log entries not applied on this node yet.",
                Gauge(f.lag),
            )?;
            put(
                "pnsd_redis_reconnects",
                "Fleet feed reconnects to Redis.",
                Counter(f.reconnects),
            )?;
        }
        let p = &self.process;
        let process = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes.map(Gauge),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes.map(Gauge),
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                p.open_fds.map(Gauge),
            ),
            (
                "process_max_fds",
                "Maximum open file descriptors.",
                p.max_fds.map(Gauge),
            ),
            (
                "process_cpu_seconds",
                "User and system CPU time spent in seconds.",
                p.cpu_seconds.map(CounterF),
            ),
        ];
        // A figure /proc could not give is left out, not reported as 0.
        for (name, help, v) in process {
            if let Some(v) = v {
                put(name, help, v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_snapshot_sums_the_reactors_and_names_every_metric() {
        let config = Config {
            threads: 2,
            ..Config::default()
        };
        let hub = Hub::new(config, 10, None, 1);
        hub.gauges[0].parked.store(2, Ordering::Relaxed);
        hub.gauges[1].parked.store(3, Ordering::Relaxed);
        hub.gauges[1].delivered.store(7, Ordering::Relaxed);
        hub.gauges[0].tally.response(404, Some(Outcome::Error));
        hub.gauges[1].tally.response(200, Some(Outcome::Message));
        hub.gauges[1]
            .tally
            .fanout(std::time::Duration::from_millis(3));
        let text = Snapshot::take(&hub).render();
        assert_eq!(value(&text, "pnsd_parked_polls"), Some(5.0));
        assert_eq!(value(&text, "pnsd_delivered_total"), Some(7.0));
        assert_eq!(
            value(&text, "pnsd_http_errors_total{status=\"404\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "pnsd_answers_total{outcome=\"message\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "pnsd_fanout_seconds_bucket{le=\"0.0025\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "pnsd_fanout_seconds_bucket{le=\"0.005\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "pnsd_fanout_seconds_bucket{le=\"+Inf\"}"),
            Some(1.0)
        );
        assert_eq!(value(&text, "pnsd_fanout_seconds_count"), Some(1.0));
        for name in [
            "pnsd_connections",
            "pnsd_sse_streams",
            "pnsd_channels",
            "pnsd_buffered_messages",
            "pnsd_published_total",
            "pnsd_connections_refused_total",
            "pnsd_accept_pauses_total",
            "pnsd_publish_errors_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_cpu_seconds_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(
            !text.contains("pnsd_redis"),
            "fleet figures without fleet mode"
        );
    }

    #[test]
    fn fleet_figures_appear_once_a_link_is_registered() {
        let hub = Hub::new(Config::default(), 10, None, 1);
        let feed = Arc::new(FeedState::default());
        hub.fleet.set(feed).expect("registered once");
        let text = Snapshot::take(&hub).render();
        assert_eq!(value(&text, "pnsd_redis_connected"), Some(0.0));
        assert_eq!(value(&text, "pnsd_redis_lag"), Some(0.0));
        assert_eq!(value(&text, "pnsd_redis_reconnects_total"), Some(0.0));
    }
}
