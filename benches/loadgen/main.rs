//! pnsd's load generator (issue 4): density, fan-out, re-poll, ingest and idle CPU against
//! pnsd, nginx+nchan or a Jetty long-poll server (upgrade and SSE density: pnsd only). The
//! command line is in `README.md` beside this file.
//!
//! Invariants: one mio `Poll` per thread (no async runtime): one thread, except re-poll, which
//! spreads its clients over `--client-threads` loops that share nothing but a start barrier and
//! per-channel progress counters (`scenarios::RepollSync`); the soft RLIMIT_NOFILE is
//! raised to the hard limit before anything opens, and a run needing more sockets than the limit
//! allows (minus `FD_RESERVE`) is refused up front. Stdout carries only the result table;
//! progress and errors go to stderr. A failing scenario is reported and the others still run;
//! the exit status is then 1 (2 for a bad command line).

mod args;
mod crowd;
mod dialect;
mod http;
mod order;
mod procfs;
mod publisher;
mod reactor;
mod report;
mod scenarios;
mod sse;
mod upgrade;

use args::{Command, Options, Scenario, Target};
use report::Results;

/// Descriptors kept free beyond the client sockets: the epoll fd, publisher connections (at
/// most 10), side channels, /proc reads, stdio, with a wide margin.
const FD_RESERVE: u64 = 200;

fn run(o: &Options) -> (Results, Vec<String>) {
    let mut res = Results {
        target: o.target.name().to_string(),
        label: o.label.clone(),
        conns: o.conns,
        ..Results::default()
    };
    let mut errors = Vec::new();
    let limit = match procfs::raise_nofile() {
        Ok(l) => l,
        Err(e) => {
            errors.push(format!("cannot raise RLIMIT_NOFILE: {e}"));
            return (res, errors);
        }
    };
    let biggest = if o.runs(Scenario::Upgrade) {
        o.conns + o.repoll_clients
    } else if o.runs(Scenario::Density)
        || o.runs(Scenario::Fanout)
        || o.runs(Scenario::Idle)
        || o.runs(Scenario::SseDensity)
    {
        o.conns.max(o.repoll_clients)
    } else {
        o.repoll_clients
    };
    if biggest as u64 + FD_RESERVE > limit {
        errors.push(format!(
            "{biggest} connections need {} open files; the limit is {limit}",
            biggest as u64 + FD_RESERVE
        ));
        return (res, errors);
    }
    let fail = |what: &str, e: String, errors: &mut Vec<String>| {
        eprintln!("loadgen: {what} failed: {e}");
        errors.push(format!("{what}: {e}"));
    };
    let mut crowd = None;
    if o.runs(Scenario::Density) {
        match scenarios::density(o, &mut res) {
            Ok(c) => crowd = Some(c),
            Err(e) => fail("density", e, &mut errors),
        }
    }
    if o.runs(Scenario::Idle) {
        let c = match crowd.take() {
            Some(c) => Ok(c),
            None => crowd::Crowd::parked(o, o.conns, "idle"),
        };
        match c.and_then(|mut c| scenarios::idle(o, &mut c, &mut res).map(|_| c)) {
            Ok(c) => crowd = Some(c),
            Err(e) => fail("idle", e, &mut errors),
        }
    }
    if o.runs(Scenario::Fanout) {
        let c = match crowd.take() {
            Some(c) => Ok(c),
            None => crowd::Crowd::parked(o, o.conns, "fanout"),
        };
        if let Err(e) = c.and_then(|mut c| scenarios::fanout(o, &mut c, &mut res)) {
            fail("fanout", e, &mut errors);
        }
    }
    drop(crowd);
    if o.runs(Scenario::Repoll) {
        if let Err(e) = scenarios::repoll(o, &mut res) {
            fail("repoll", e, &mut errors);
        }
    }
    if o.runs(Scenario::Ingest) {
        if let Err(e) = scenarios::ingest(o, &mut res) {
            fail("ingest", e, &mut errors);
        }
    }
    if o.runs(Scenario::Upgrade) {
        if let Err(e) = upgrade::upgrade(o, &mut res) {
            fail("upgrade", e, &mut errors);
        }
    }
    if o.runs(Scenario::SseDensity) {
        if o.target != Target::Pnsd {
            eprintln!(
                "loadgen: sse-density is not supported for {} (pnsd only), skipped",
                o.target.name()
            );
        } else if let Err(e) = sse::sse_density(o, &mut res) {
            fail("sse-density", e, &mut errors);
        }
    }
    (res, errors)
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let o = match args::parse(&argv) {
        Ok(Command::Usage) => {
            println!("{}", args::USAGE);
            return;
        }
        Ok(Command::Run(o)) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let (res, errors) = run(&o);
    println!("{}", report::HEADER);
    println!("{}", res.row());
    let mut status = if errors.is_empty() { 0 } else { 1 };
    if let Some(path) = &o.json {
        let mut j = res.json();
        j["errors"] = serde_json::json!(errors);
        let text = j.to_string() + "\n";
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            status = 1;
        }
    }
    for e in &errors {
        eprintln!("loadgen: error: {e}");
    }
    std::process::exit(status);
}
