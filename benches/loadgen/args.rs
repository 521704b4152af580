//! The load generator's command line (documented in `benches/loadgen/README.md`).
//!
//! Invariants: `parse` either returns a fully validated `Options` (every number positive where
//! zero would make a scenario meaningless, URLs split into address and path) or a one-line
//! error for the caller to print before exiting 2. `--bench` and `--test`, which `cargo bench`
//! and `cargo test` append, are accepted and ignored anywhere on the line.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Parked polls in density, fan-out and idle: the headline figure (15,000 sockets under
/// a 20,000 per-process open-file limit).
const DEFAULT_CONNS: usize = 15_000;
/// Fan-out rounds: enough for a stable p99 over 75,000 samples, short enough to run in seconds.
const DEFAULT_ROUNDS: usize = 5;
/// Re-poll clients: the scenario size.
const DEFAULT_REPOLL_CLIENTS: usize = 1_000;
/// Re-poll duration in seconds when `--seconds` is not given.
const DEFAULT_REPOLL_SECONDS: u64 = 10;
/// Idle-CPU window in seconds when `--seconds` is not given ("CPU seconds over 60 s").
const DEFAULT_IDLE_SECONDS: u64 = 60;
/// Client event loops for re-poll when `--client-threads` is not given: one per core, so the
/// load generator can use what the server leaves (one thread was the bottleneck against pnsd).
fn default_client_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
/// Re-poll flow control: the publisher stays at most this many messages ahead of a channel's
/// slowest subscriber, half the 64-message buffer both pnsd and nchan keep in `peers.sh`, so no
/// server is pushed into dropping messages. 0 turns the hold off.
const DEFAULT_REPOLL_LAG: u64 = 32;
/// Upgrades in a row of the upgrade scenario (the "3 times in a row").
const DEFAULT_UPGRADES: usize = 3;
/// Messages for ingest: long enough (about a second at 100k/s) to amortise start-up.
const DEFAULT_MESSAGES: u64 = 100_000;

/// The one-line usage hint printed for `cargo bench` with no options.
pub const USAGE: &str =
    "loadgen: usage: cargo bench --bench loadgen -- [--target pnsd|nchan|jetty] \
[--addr HOST:PORT]... [--publish-socket PATH] [--publish-url URL] [--pid PID]... \
[--scenario density|fanout|repoll|ingest|idle|fleet|upgrade|sse-density|all] [--upgrades N] [--conns N] [--rounds N] [--repoll-clients N] \
[--client-threads N] [--repoll-lag N] [--seconds N] [--messages N] [--json PATH] [--label NAME] (see benches/loadgen/README.md)";

/// Which server dialect to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Pnsd,
    Nchan,
    Jetty,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Pnsd => "pnsd",
            Target::Nchan => "nchan",
            Target::Jetty => "jetty",
        }
    }
}

/// Which scenarios to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Density,
    Fanout,
    Repoll,
    Ingest,
    Idle,
    /// Density, fan-out and ingest: the fleet comparison (`benches/fleet.sh`).
    Fleet,
    /// Not part of `All`: it replaces the server process (pnsd only).
    Upgrade,
    /// Not part of `All` (pnsd only): bytes per idle Server-Sent Events stream.
    SseDensity,
    All,
}

/// Where HTTP publishes go: a resolved address plus the path prefix.
#[derive(Clone, Debug)]
pub struct PublishUrl {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

/// Validated options.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    /// Every `--addr` (repeatable: nodes of a fleet); subscriber i connects to `addrs[i % n]`.
    pub addrs: Vec<SocketAddr>,
    pub host: String,
    pub publish_socket: PathBuf,
    pub publish_url: Option<PublishUrl>,
    pub pids: Vec<u32>,
    pub scenario: Scenario,
    pub conns: usize,
    pub rounds: usize,
    pub repoll_clients: usize,
    /// Event-loop threads the re-poll clients are spread over.
    pub client_threads: usize,
    /// How far the re-poll publisher may run ahead of a channel's slowest subscriber; 0: no limit.
    pub repoll_lag: u64,
    pub seconds: Option<u64>,
    pub messages: u64,
    pub json: Option<PathBuf>,
    pub label: String,
    /// Upgrades of the upgrade scenario.
    pub upgrades: usize,
    /// Polls other crowds keep parked on the server meanwhile (re-poll's settle counts them).
    pub also_parked: usize,
}

impl Options {
    pub fn repoll_seconds(&self) -> u64 {
        self.seconds.unwrap_or(DEFAULT_REPOLL_SECONDS)
    }

    pub fn idle_seconds(&self) -> u64 {
        self.seconds.unwrap_or(DEFAULT_IDLE_SECONDS)
    }

    pub fn runs(&self, s: Scenario) -> bool {
        match self.scenario {
            Scenario::All => !matches!(s, Scenario::Upgrade | Scenario::SseDensity),
            Scenario::Fleet => matches!(s, Scenario::Density | Scenario::Fanout | Scenario::Ingest),
            own => own == s,
        }
    }
}

/// What the command line asks for.
pub enum Command {
    Usage,
    Run(Box<Options>),
}

fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    let mut addrs = hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{hostport} resolves to no address"))
}

fn parse_publish_url(url: &str) -> Result<PublishUrl, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--publish-url {url}: only http:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok(PublishUrl {
        addr: resolve(&hostport)?,
        host: hostport,
        path: path.trim_end_matches('/').to_string(),
    })
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name} {v}: not a non-negative integer"))
}

fn positive(name: &str, v: &str) -> Result<usize, String> {
    match number::<usize>(name, v)? {
        0 => Err(format!("{name} must be at least 1")),
        n => Ok(n),
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let args: Vec<&String> = args
        .iter()
        .filter(|a| a.as_str() != "--bench" && a.as_str() != "--test")
        .collect();
    if args.is_empty() {
        return Ok(Command::Usage);
    }
    let mut target = Target::Pnsd;
    let mut addr_list: Vec<String> = Vec::new();
    let mut publish_socket = PathBuf::from("./pnsd.sock");
    let mut publish_url = None;
    let mut pids = Vec::new();
    let mut scenario = Scenario::All;
    let mut conns = DEFAULT_CONNS;
    let mut rounds = DEFAULT_ROUNDS;
    let mut repoll_clients = DEFAULT_REPOLL_CLIENTS;
    let mut client_threads = default_client_threads();
    let mut repoll_lag = DEFAULT_REPOLL_LAG;
    let mut seconds = None;
    let mut messages = DEFAULT_MESSAGES;
    let mut json = None;
    let mut label = None;
    let mut upgrades = DEFAULT_UPGRADES;
    let mut i = 0;
    while i < args.len() {
        let name = args[i].as_str();
        if name == "--help" || name == "-h" {
            return Ok(Command::Usage);
        }
        let value = args
            .get(i + 1)
            .map(|s| s.as_str())
            .ok_or_else(|| format!("{name} needs a value (or unknown option)"))?;
        match name {
            "--target" => {
                target = match value {
                    "pnsd" => Target::Pnsd,
                    "nchan" => Target::Nchan,
                    "jetty" => Target::Jetty,
                    _ => return Err(format!("--target {value}: expected pnsd, nchan or jetty")),
                }
            }
            "--addr" => addr_list.push(value.to_string()),
            "--publish-socket" => publish_socket = PathBuf::from(value),
            "--publish-url" => publish_url = Some(parse_publish_url(value)?),
            "--pid" => pids.push(number::<u32>(name, value)?),
            "--scenario" => {
                scenario = match value {
                    "density" => Scenario::Density,
                    "fanout" => Scenario::Fanout,
                    "repoll" => Scenario::Repoll,
                    "ingest" => Scenario::Ingest,
                    "idle" => Scenario::Idle,
                    "fleet" => Scenario::Fleet,
                    "upgrade" => Scenario::Upgrade,
                    "sse-density" => Scenario::SseDensity,
                    "all" => Scenario::All,
                    _ => {
                        return Err(format!(
                        "--scenario {value}: expected density, fanout, repoll, ingest, idle, fleet, upgrade, sse-density or all"
                    ))
                    }
                }
            }
            "--conns" => conns = positive(name, value)?,
            "--rounds" => rounds = positive(name, value)?,
            "--repoll-clients" => repoll_clients = positive(name, value)?,
            "--client-threads" => client_threads = positive(name, value)?,
            "--repoll-lag" => repoll_lag = number(name, value)?,
            "--seconds" => seconds = Some(positive(name, value)? as u64),
            "--messages" => messages = positive(name, value)? as u64,
            "--json" => json = Some(PathBuf::from(value)),
            "--label" => label = Some(value.to_string()),
            "--upgrades" => upgrades = positive(name, value)?,
            _ => return Err(format!("unknown option {name}")),
        }
        i += 2;
    }
    if target != Target::Pnsd && publish_url.is_none() {
        return Err(format!(
            "--target {} needs --publish-url http://HOST:PORT/PATH",
            target.name()
        ));
    }
    if addr_list.is_empty() {
        addr_list.push("127.0.0.1:8080".to_string());
    }
    let addrs = addr_list
        .iter()
        .map(|a| resolve(a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Command::Run(Box::new(Options {
        target,
        addrs,
        host: addr_list[0].clone(),
        publish_socket,
        publish_url,
        pids,
        scenario,
        conns,
        rounds,
        repoll_clients,
        client_threads,
        repoll_lag,
        seconds,
        messages,
        json,
        label: label.unwrap_or_else(|| target.name().to_string()),
        upgrades,
        also_parked: 0,
    })))
}
