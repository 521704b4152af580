//! The five measurements of issue 4: density, fan-out, re-poll, ingest and idle CPU.
//!
//! Invariants: every wait has a deadline and fails with a message saying what was still
//! missing; every loop is bounded by a count or a deadline. Messages published here carry
//! `{"seq":N}`, N counting up per channel from 0.

use crate::args::{Options, Target};
use crate::crowd::{channel_name, make_publisher, note, Crowd, TICK};
use crate::dialect;
use crate::order::OrderCheck;
use crate::procfs;
use crate::reactor::Completion;
use crate::report::{percentile, Fanout, Ingest, Repoll, Results};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// Pause after parking before the second PSS reading (the method).
pub const DENSITY_PAUSE: Duration = Duration::from_secs(2);
/// Deadline for one fan-out round's answers (nchan takes ~0.4 s, Jetty ~2 s for 15,000).
const FANOUT_DEADLINE: Duration = Duration::from_secs(60);
/// Client floor: how long the unread answers must stay unchanged before they count as whole.
const FLOOR_STABLE: Duration = Duration::from_millis(200);
/// Channels of the re-poll scenario (the "spread over 10 channels").
const REPOLL_CHANNELS: usize = 10;
/// Unacknowledged publishes during re-poll (the "keep up to 64 unacked").
const REPOLL_WINDOW: u64 = 64;
/// Publisher's turn length while flow control holds it back: short, because the subscribers it
/// waits for may be on another thread and their progress wakes nothing here.
const REPOLL_BLOCKED_TICK: Duration = Duration::from_micros(200);
/// After the re-poll window: time for every client to catch up with its channel's last message.
const REPOLL_DRAIN: Duration = Duration::from_secs(20);
/// Unacknowledged publish lines during ingest over pnsd's Unix socket (the window).
const INGEST_WINDOW_UNIX: u64 = 1024;
/// HTTP ingest: keep-alive connections and pipelined POSTs per connection (64 in flight).
const INGEST_HTTP_CONNS: usize = 8;
const INGEST_HTTP_DEPTH: usize = 8;
/// Ingest deadline: a fixed part plus 2 ms per message (100,000 -> 230 s, i.e. >= 435 msg/s).
const INGEST_BASE: Duration = Duration::from_secs(30);
const INGEST_PER_MSG: Duration = Duration::from_millis(2);

/// Density: PSS growth from idle to `--conns` parked polls, per parked poll.
pub fn density(o: &Options, res: &mut Results) -> Result<Crowd, String> {
    let before = if o.pids.is_empty() {
        note!("density: no --pid given: parking without memory readings");
        None
    } else {
        Some(procfs::pss_kb(&o.pids)?)
    };
    let kernel_before = procfs::kernel_mem().ok();
    let mut crowd = Crowd::new(o, o.conns, vec![channel_name("crowd")])?;
    crowd.poll_all(o)?;
    crowd.settle(o, "density")?;
    let early = crowd.hold_for(o, DENSITY_PAUSE)?;
    if early > 0 {
        note!("density: {early} polls answered during the pause (re-polled)");
    }
    if let Some(b) = before {
        let after = procfs::pss_kb(&o.pids)?;
        res.pss_idle_kb = Some(b);
        res.pss_parked_kb = Some(after);
        res.bytes_per_parked = Some((after as f64 - b as f64) * 1024.0 / o.conns as f64);
        note!(
            "density: PSS {b} kB -> {after} kB: {:.0} B per parked poll",
            res.bytes_per_parked.unwrap_or(0.0)
        );
    }
    if let (Some(kb), Ok(ka)) = (kernel_before, procfs::kernel_mem()) {
        let slab = ka.slab_kb as i64 - kb.slab_kb as i64;
        let pages = ka.tcp_mem_pages as i64 - kb.tcp_mem_pages as i64;
        res.kernel_slab_kb = Some(slab);
        res.kernel_tcp_mem_pages = Some(pages);
        note!(
            "density: kernel slab +{slab} kB (both ends of {} loopback connections), TCP mem \
             +{pages} pages",
            o.conns
        );
    }
    res.reconnects += crowd.reactor.counters.reconnects;
    Ok(crowd)
}

/// Idle: server CPU seconds over `--seconds` with the crowd parked and no traffic.
pub fn idle(o: &Options, crowd: &mut Crowd, res: &mut Results) -> Result<(), String> {
    if o.pids.is_empty() {
        return Err("idle needs --pid to read the server's CPU time".into());
    }
    crowd.settle(o, "idle")?;
    let secs = o.idle_seconds();
    let cpu0 = procfs::cpu_seconds(&o.pids)?;
    let start = Instant::now();
    let answers = crowd.hold_for(o, Duration::from_secs(secs))?;
    let cpu1 = procfs::cpu_seconds(&o.pids)?;
    let took = start.elapsed().as_secs_f64();
    if answers > 0 {
        note!("idle: {answers} polls answered (expired?) during the window, re-polled");
    }
    note!(
        "idle: server used {:.2} CPU s over {took:.1} s",
        cpu1 - cpu0
    );
    res.idle_cpu_s = Some(cpu1 - cpu0);
    res.idle_seconds = Some(secs);
    Ok(())
}

/// The server's CPU seconds so far, when `--pid` names it.
fn server_cpu(o: &Options) -> Result<Option<f64>, String> {
    if o.pids.is_empty() {
        Ok(None)
    } else {
        procfs::cpu_seconds(&o.pids).map(Some)
    }
}

/// Fan-out: per round, one publish to the crowd's channel, latency to each full answer.
pub fn fanout(o: &Options, crowd: &mut Crowd, res: &mut Results) -> Result<(), String> {
    let n = crowd.reactor.len();
    let publisher = make_publisher(o, &crowd.reactor, 1, 1)?;
    crowd.reactor.publisher = Some(publisher);
    let channel = crowd.channels[0].clone();
    let mut latencies: Vec<f64> = Vec::with_capacity(n * o.rounds);
    let mut received = vec![false; n];
    let mut missing = 0;
    let mut request = Vec::new();
    let mut answers: Vec<Completion> = Vec::with_capacity(n);
    let mut client_cpu = 0.0;
    let mut server_cpu_total = Some(0.0);
    for round in 0..o.rounds {
        crowd.settle(o, &format!("fanout round {}", round + 1))?;
        received.iter_mut().for_each(|r| *r = false);
        request.clear();
        let seq = round as u64;
        dialect::publish_request(
            o,
            &channel,
            &format!("{{\"seq\":{seq},\"fanout\":true}}"),
            &mut request,
        );
        let cpu0 = procfs::self_cpu_seconds();
        let server0 = server_cpu(o)?;
        let t0 = Instant::now();
        if let Some(p) = crowd.reactor.publisher.as_mut() {
            p.send(0, std::mem::take(&mut request));
        }
        let deadline = t0 + FANOUT_DEADLINE;
        loop {
            let (outstanding, failed) = crowd
                .reactor
                .publisher
                .as_ref()
                .map_or((0, None), |p| (p.outstanding(), p.last_error.clone()));
            if let Some(e) = failed {
                return Err(format!("fanout round {}: publish failed: {e}", round + 1));
            }
            if answers.len() == n && outstanding == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "fanout round {}: {} of {n} answers after {} s (publish unacknowledged: {outstanding})",
                    round + 1,
                    answers.len(),
                    FANOUT_DEADLINE.as_secs()
                ));
            }
            crowd.turn(TICK)?;
            let done = std::mem::take(&mut crowd.done);
            for c in done {
                if dialect::looks_empty(o.target, &c.response) || received[c.client] {
                    // Expired just before the publish (or an error): ask again at once.
                    crowd.read(o, &c);
                    crowd.poll(o, c.client)?;
                    continue;
                }
                received[c.client] = true;
                answers.push(c);
            }
        }
        let cpu = procfs::self_cpu_seconds() - cpu0;
        client_cpu += cpu;
        let server = server_cpu(o)?.zip(server0).map(|(b, a)| b - a);
        server_cpu_total = server_cpu_total.zip(server).map(|(t, s)| t + s);
        // Bodies are read after the round so that parsing never delays the next answer.
        for c in answers.drain(..) {
            latencies.push((c.at - t0).as_secs_f64() * 1000.0);
            crowd.read(o, &c);
            if !crowd.seqs.contains(&seq) {
                missing += 1;
            }
        }
        let this = &mut latencies[round * n..];
        this.sort_by(f64::total_cmp);
        note!(
            "fanout round {}: {n} answers, p50 {:.1} ms, max {:.1} ms (CPU: load generator {:.0} ms, \
             server {})",
            round + 1,
            percentile(this, 0.5),
            percentile(this, 1.0),
            cpu * 1000.0,
            server.map_or("?".to_string(), |s| format!("{:.0} ms", s * 1000.0))
        );
        crowd.poll_all(o)?;
    }
    let floor = client_floor(o, crowd, &channel, o.rounds as u64)?;
    res.fanout = Some(Fanout {
        client_floor_ms: floor.map(|f| f.0),
        client_floor_cpu_ms: floor.map(|f| f.1),
        rounds: o.rounds,
        missing,
        client_cpu_ms: client_cpu * 1000.0 / o.rounds as f64,
        server_cpu_ms: server_cpu_total.map(|t| t * 1000.0 / o.rounds as f64),
        ..Fanout::from_latencies(latencies)
    });
    res.reconnects += crowd.reactor.counters.reconnects;
    Ok(())
}

/// The client floor of fan-out: one more publish, its answers left unread until every one sits
/// whole in the crowd's sockets (every client socket holds unread bytes and their total stays
/// unchanged for `FLOOR_STABLE`), then read as fast as this load generator can. The time to
/// read them (ms) and the CPU it took (ms) bound from below what any server's fan-out can
/// show with this client on this machine. `None` when the server is not on IPv4 (no
/// /proc/net/tcp view).
fn client_floor(
    o: &Options,
    crowd: &mut Crowd,
    channel: &str,
    seq: u64,
) -> Result<Option<(f64, f64)>, String> {
    if !o.addrs.iter().all(SocketAddr::is_ipv4) {
        return Ok(None);
    }
    let n = crowd.reactor.len();
    crowd.settle(o, "fanout floor")?;
    dialect::publish_blocking(o, channel, &format!("{{\"seq\":{seq},\"fanout\":true}}"))
        .map_err(|e| format!("fanout floor: {e}"))?;
    let deadline = Instant::now() + FANOUT_DEADLINE;
    let mut last: Option<u64> = None;
    loop {
        let Some((_, unread, bytes)) = procfs::sockets_all(&o.addrs, procfs::End::Client)? else {
            return Ok(None);
        };
        if unread == n && last == Some(bytes) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "fanout floor: {unread} of {n} answers waiting after {} s",
                FANOUT_DEADLINE.as_secs()
            ));
        }
        last = (unread == n).then_some(bytes);
        std::thread::sleep(FLOOR_STABLE);
    }
    let cpu0 = procfs::self_cpu_seconds();
    let t0 = Instant::now();
    let mut answers = 0;
    while answers < n {
        if Instant::now() > deadline {
            return Err(format!(
                "fanout floor: read {answers} of {n} queued answers"
            ));
        }
        crowd.turn(TICK)?;
        answers += crowd.done.len();
        crowd.done.clear();
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let cpu = (procfs::self_cpu_seconds() - cpu0) * 1000.0;
    note!("fanout floor: {n} queued answers read in {ms:.1} ms (load generator CPU {cpu:.0} ms)");
    Ok(Some((ms, cpu)))
}

/// What the re-poll threads share: a start line, a failure flag and, once publishing has
/// stopped, each channel's next seq (what every client must have caught up with).
struct RepollSync {
    barrier: Barrier,
    /// Per thread and channel: the lowest next-expected seq among the thread's clients.
    progress: Vec<[AtomicU64; REPOLL_CHANNELS]>,
    failed: AtomicBool,
    final_seq: Mutex<Option<[u64; REPOLL_CHANNELS]>>,
}

/// What one re-poll thread counted.
struct RepollPart {
    reconnects: u64,
    responses: u64,
    messages: u64,
    order: OrderCheck,
    behind: u64,
    published: u64,
    /// Thread 0 only: (server CPU, load generator CPU) over the publishing window.
    cpu: Option<(Option<f64>, f64)>,
}

/// Re-poll: `--repoll-clients` clients, spread over `--client-threads` event loops, re-poll at
/// once while thread 0 also publishes round-robin to 10 channels, never more than `--repoll-lag`
/// messages ahead of a channel's slowest subscriber; every client's order is checked.
pub fn repoll(o: &Options, res: &mut Results) -> Result<(), String> {
    let n = o.repoll_clients;
    let threads = o.client_threads.clamp(1, n);
    let channels: Vec<String> = (0..REPOLL_CHANNELS)
        .map(|k| channel_name(&format!("repoll{k}")))
        .collect();
    let sync = RepollSync {
        barrier: Barrier::new(threads),
        progress: (0..threads)
            .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            .collect(),
        failed: AtomicBool::new(false),
        final_seq: Mutex::new(None),
    };
    let parts: Vec<Result<RepollPart, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let size = n / threads + usize::from(t < n % threads);
                let (channels, sync) = (&channels, &sync);
                scope.spawn(move || repoll_part(o, t, size, n, channels, sync))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("repoll: a client thread panicked".into()))
            })
            .collect()
    });
    let mut order = OrderCheck::new(0);
    let (mut responses, mut messages, mut behind, mut published) = (0, 0, 0, 0);
    let mut cpu = None;
    for part in parts {
        let p = part?;
        res.reconnects += p.reconnects;
        responses += p.responses;
        messages += p.messages;
        behind += p.behind;
        published += p.published;
        order.gaps += p.order.gaps;
        order.skipped += p.order.skipped;
        order.disorder += p.order.disorder;
        order.resets += p.order.resets;
        cpu = cpu.or(p.cpu);
    }
    if behind > 0 {
        note!("repoll: {behind} clients never saw their channel's last message");
    }
    let secs = o.repoll_seconds();
    let secs_f = secs as f64;
    let (server_cpu_s, client_cpu_s) = cpu.unwrap_or((None, 0.0));
    let r = Repoll {
        server_cpu_s,
        client_cpu_s,
        per_s: responses as f64 / secs_f,
        msgs_per_s: messages as f64 / secs_f,
        clients: n,
        client_threads: threads,
        seconds: secs_f,
        published,
        gaps: order.gaps,
        skipped: order.skipped,
        disorder: order.disorder,
        behind,
        resets: order.resets,
    };
    note!(
        "repoll: {:.0} answers/s, {:.0} messages/s, {published} published; order violations {} \
         ({} unannounced gaps skipping {} messages, {} repeated or out of order, {behind} \
         clients not caught up); {} declared resets",
        r.per_s,
        r.msgs_per_s,
        r.violations(),
        r.gaps,
        r.skipped,
        r.disorder,
        r.resets
    );
    if let Some(cpu) = r.server_cpu_s {
        note!(
            "repoll: server CPU {cpu:.2} s ({:.2} us per answer, {:.3} us per message), \
             load generator CPU {:.2} s ({threads} threads), over {secs} s",
            cpu * 1e6 / responses.max(1) as f64,
            cpu * 1e6 / messages.max(1) as f64,
            r.client_cpu_s
        );
    }
    res.repoll = Some(r);
    Ok(())
}

/// One re-poll thread: `size` of the `total` clients; thread 0 also publishes and reads the CPU
/// figures. Every thread parks its clients, then all start together (`sync.barrier`).
fn repoll_part(
    o: &Options,
    t: usize,
    size: usize,
    total: usize,
    channels: &[String],
    sync: &RepollSync,
) -> Result<RepollPart, String> {
    let setup = (|| -> Result<Crowd, String> {
        let mut crowd = Crowd::new(o, size, channels.to_vec())?;
        crowd.expect_parked = total + o.also_parked;
        if t == 0 {
            let depth = match o.target {
                Target::Pnsd => REPOLL_WINDOW as usize,
                // One HTTP connection per channel keeps each channel's publishes in order.
                _ => (REPOLL_WINDOW as usize).div_ceil(REPOLL_CHANNELS),
            };
            crowd.reactor.publisher =
                Some(make_publisher(o, &crowd.reactor, REPOLL_CHANNELS, depth)?);
        }
        crowd.poll_all(o)?;
        crowd.settle(o, &format!("repoll thread {t}"))?;
        Ok(crowd)
    })();
    if setup.is_err() {
        sync.failed.store(true, Ordering::SeqCst);
    }
    sync.barrier.wait();
    let mut crowd = setup?;
    if sync.failed.load(Ordering::SeqCst) {
        return Err(format!("repoll thread {t}: another thread failed to start"));
    }
    let n = size;
    let mut order = OrderCheck::new(n);
    let mut next_seq = [0u64; REPOLL_CHANNELS];
    let mut final_seq: Option<[u64; REPOLL_CHANNELS]> = None;
    let mut k = 0usize;
    let mut responses = 0u64;
    let mut messages = 0u64;
    let mut behind = 0;
    let mut request = Vec::new();
    let secs = o.repoll_seconds();
    let cpu_start = if t == 0 {
        Some((server_cpu(o)?, procfs::self_cpu_seconds()))
    } else {
        None
    };
    let mut cpu_used: Option<(Option<f64>, f64)> = None;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let drain_end = end + REPOLL_DRAIN;
    loop {
        let now = Instant::now();
        let in_window = now < end;
        let mut held_back = false;
        if in_window {
            if let Some(p) = crowd.reactor.publisher.as_mut() {
                // Bounded by the window: at most REPOLL_WINDOW sends per turn.
                while p.outstanding() < REPOLL_WINDOW {
                    let ch = k % REPOLL_CHANNELS;
                    let slowest = sync
                        .progress
                        .iter()
                        .map(|t| t[ch].load(Ordering::Acquire))
                        .min()
                        .unwrap_or(0);
                    if o.repoll_lag > 0 && next_seq[ch] >= slowest.saturating_add(o.repoll_lag) {
                        held_back = true;
                        break;
                    }
                    request.clear();
                    let data = format!("{{\"seq\":{}}}", next_seq[ch]);
                    dialect::publish_request(o, &channels[ch], &data, &mut request);
                    p.send(ch, std::mem::take(&mut request));
                    next_seq[ch] += 1;
                    k += 1;
                }
            }
        } else {
            if let (Some((s0, c0)), None) = (cpu_start, cpu_used) {
                let server = server_cpu(o)?.zip(s0).map(|(b, a)| b - a);
                cpu_used = Some((server, procfs::self_cpu_seconds() - c0));
            }
            if final_seq.is_none() {
                let mut shared = sync.final_seq.lock().unwrap_or_else(|e| e.into_inner());
                if t == 0 {
                    *shared = Some(next_seq);
                }
                final_seq = *shared;
            }
            let outstanding = crowd
                .reactor
                .publisher
                .as_ref()
                .map_or(0, |p| p.outstanding());
            if let Some(last) = final_seq {
                let caught_up = (0..n).all(|i| order.expected[i] == last[i % REPOLL_CHANNELS]);
                if outstanding == 0 && caught_up {
                    break;
                }
                if now > drain_end {
                    behind = (0..n)
                        .filter(|&i| order.expected[i] != last[i % REPOLL_CHANNELS])
                        .count() as u64;
                    break;
                }
            } else if now > drain_end {
                return Err(format!("repoll thread {t}: publishing never ended"));
            }
        }
        let timeout = match (in_window, held_back) {
            (true, true) => (end - now).min(REPOLL_BLOCKED_TICK),
            (true, false) => (end - now).min(TICK),
            (false, _) => TICK,
        };
        crowd.turn(timeout)?;
        let done = std::mem::take(&mut crowd.done);
        for c in &done {
            let a = crowd.read(o, c);
            if c.at <= end {
                responses += 1;
                messages += a.messages as u64;
            }
            order.check(c.client, a.reset, &crowd.seqs);
            crowd.poll(o, c.client)?;
        }
        if !done.is_empty() {
            for (ch, slot) in sync.progress[t].iter().enumerate() {
                let slowest = (ch..n)
                    .step_by(REPOLL_CHANNELS)
                    .map(|i| order.expected[i])
                    .min();
                slot.store(slowest.unwrap_or(u64::MAX), Ordering::Release);
            }
        }
        crowd.done = done;
        crowd.done.clear();
    }
    let published = if t == 0 {
        publish_tally(&crowd, "repoll").0
    } else {
        0
    };
    Ok(RepollPart {
        reconnects: crowd.reactor.counters.reconnects,
        responses,
        messages,
        order,
        behind,
        published,
        cpu: cpu_used,
    })
}

/// Ingest: `--messages` publishes as fast as the window allows.
pub fn ingest(o: &Options, res: &mut Results) -> Result<(), String> {
    // No subscribers: the crowd only carries the publisher's event loop.
    let mut crowd = Crowd::new(o, 0, Vec::new())?;
    let (lanes, depth, window) = match o.target {
        Target::Pnsd => (1, INGEST_WINDOW_UNIX as usize, INGEST_WINDOW_UNIX),
        _ => (
            INGEST_HTTP_CONNS,
            INGEST_HTTP_DEPTH,
            (INGEST_HTTP_CONNS * INGEST_HTTP_DEPTH) as u64,
        ),
    };
    crowd.reactor.publisher = Some(make_publisher(o, &crowd.reactor, lanes, depth)?);
    let channel = channel_name("ingest");
    let total = o.messages;
    let start = Instant::now();
    let deadline = start + INGEST_BASE + INGEST_PER_MSG * total.min(u32::MAX as u64) as u32;
    let mut sent = 0u64;
    let mut request = Vec::new();
    loop {
        let Some(p) = crowd.reactor.publisher.as_mut() else {
            return Err("ingest: no publisher".into());
        };
        if p.acked + p.failed >= total {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "ingest: {} of {total} acknowledged after {:.0} s",
                p.acked + p.failed,
                start.elapsed().as_secs_f64()
            ));
        }
        while sent < total && p.outstanding() < window {
            request.clear();
            dialect::publish_request(o, &channel, &format!("{{\"seq\":{sent}}}"), &mut request);
            p.send(sent as usize, std::mem::take(&mut request));
            sent += 1;
        }
        crowd.turn(TICK)?;
    }
    let took = start.elapsed().as_secs_f64();
    let (acked, failed) = publish_tally(&crowd, "ingest");
    let i = Ingest {
        msgs_per_s: acked as f64 / took,
        messages: total,
        failed,
    };
    note!(
        "ingest: {total} publishes in {took:.2} s: {:.0} msg/s",
        i.msgs_per_s
    );
    res.ingest = Some(i);
    Ok(())
}

/// The publisher's acked and failed counts after `scenario`; failures are noted with the last
/// error.
fn publish_tally(crowd: &Crowd, scenario: &str) -> (u64, u64) {
    let Some(p) = crowd.reactor.publisher.as_ref() else {
        return (0, 0);
    };
    if p.failed > 0 {
        note!(
            "{scenario}: {} publishes failed: {}",
            p.failed,
            p.last_error.as_deref().unwrap_or("?")
        );
    }
    (p.acked, p.failed)
}
