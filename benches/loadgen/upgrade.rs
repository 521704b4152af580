//! The upgrade scenario (issue 10, item 5): `--conns` parked polls (15,000) stay parked while
//! the re-poll scenario runs (its clients re-poll, its publisher streams over one carried
//! publish connection) and pnsd is upgraded `--upgrades` times in a row through the `upgrade`
//! op. Each hand-over is timed from the request to the new process's answer (it writes it once
//! it serves) and to the old process's exit. Afterwards one publish must reach every one of
//! the parked polls; re-poll checks every answer for order, gaps, repeats and resets.
//!
//! Invariants: pnsd only (the op is pnsd's); figures of the server's CPU are not read (its pid
//! changes with each upgrade); every wait has a deadline.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::args::{Options, Target};
use crate::crowd::{note, Crowd};
use crate::dialect;
use crate::report::{Handover, Results};
use crate::scenarios;

/// How long one hand-over may take before the scenario fails (pnsd's own deadline for the new
/// process is 10 s).
const HANDOVER_DEADLINE: Duration = Duration::from_secs(30);
/// How long the re-poll stream runs before the first upgrade.
const WARM_UP: Duration = Duration::from_secs(1);

/// Asks for one upgrade and times it.
fn hand_over(o: &Options) -> Result<Handover, String> {
    let before = dialect::pnsd_stats(o)?;
    let old_pid = before["pid"].as_u64().ok_or("stats without pid")?;
    let path = o.publish_socket.display();
    let t0 = Instant::now();
    let mut s = UnixStream::connect(&o.publish_socket)
        .map_err(|e| format!("cannot connect to {path}: {e}"))?;
    s.set_read_timeout(Some(HANDOVER_DEADLINE))
        .and_then(|_| s.write_all(b"{\"op\":\"upgrade\"}\n"))
        .map_err(|e| format!("upgrade request on {path}: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("upgrade answer on {path}: {e}"))?;
    let serving = t0.elapsed();
    let answer: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("upgrade answer {line:?}: {e}"))?;
    if answer["ok"] != serde_json::Value::Bool(true) {
        return Err(format!("upgrade refused: {}", line.trim_end()));
    }
    while runs(old_pid) {
        if t0.elapsed() > HANDOVER_DEADLINE {
            return Err(format!("old process {old_pid} still runs"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(Handover {
        serving_ms: serving.as_secs_f64() * 1e3,
        gone_ms: t0.elapsed().as_secs_f64() * 1e3,
        pid: answer["pid"].as_u64().unwrap_or(0),
        generation: answer["generation"].as_u64().unwrap_or(0),
    })
}

/// Process `pid` exists and has not exited (a zombie has).
fn runs(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

pub fn upgrade(o: &Options, res: &mut Results) -> Result<(), String> {
    if o.target != Target::Pnsd {
        return Err("the upgrade scenario is pnsd's only".into());
    }
    let mut quiet = o.clone();
    quiet.pids.clear();
    let mut crowd = Crowd::parked(&quiet, o.conns, "upgrade")?;
    quiet.also_parked = o.conns;
    let published = |o: &Options| -> Result<u64, String> {
        Ok(dialect::pnsd_stats(o)?["published"].as_u64().unwrap_or(0))
    };
    let gap = Duration::from_secs(o.repoll_seconds()) / (o.upgrades as u32 + 1);
    let mut stream = Results::default();
    let handovers = std::thread::scope(|scope| -> Result<Vec<Handover>, String> {
        let repoll = scope.spawn(|| scenarios::repoll(&quiet, &mut stream));
        let start = published(o)?;
        let deadline = Instant::now() + HANDOVER_DEADLINE * 4;
        while published(o)? == start {
            if Instant::now() > deadline || repoll.is_finished() {
                return Err("the re-poll stream did not start".into());
            }
            crowd.hold_for(&quiet, Duration::from_millis(100))?;
        }
        crowd.hold_for(&quiet, WARM_UP)?;
        let mut done = Vec::new();
        for k in 0..o.upgrades {
            let h = hand_over(o)?;
            note!(
                "upgrade {}: new process {} (generation {}) serving after {:.1} ms, old one gone after {:.1} ms",
                k + 1,
                h.pid,
                h.generation,
                h.serving_ms,
                h.gone_ms
            );
            done.push(h);
            crowd.hold_for(&quiet, gap)?;
        }
        repoll
            .join()
            .map_err(|_| "the re-poll thread panicked".to_string())??;
        Ok(done)
    })?;
    res.reconnects += stream.reconnects + crowd.reactor.counters.reconnects;
    res.repoll = stream.repoll;
    res.upgrades = handovers;
    // Every poll parked before the first upgrade gets the next message.
    let mut once = quiet.clone();
    once.rounds = 1;
    once.also_parked = 0;
    scenarios::fanout(&once, &mut crowd, res)?;
    let missing = res.fanout.as_ref().map_or(0, |f| f.missing);
    let violations = res.repoll.as_ref().map_or(0, |r| r.violations() + r.resets);
    if missing > 0 || violations > 0 || res.reconnects > 0 {
        return Err(format!(
            "after the upgrades: {missing} parked polls missed the message, {violations} re-poll \
             order violations or resets, {} reconnects",
            res.reconnects
        ));
    }
    Ok(())
}
