//! Readings from /proc and the process's own limits.
//!
//! Invariants: every reading is a pure function of one file's contents (the `parse_*` helpers
//! take text so they are testable without /proc); a missing process or field is an error naming
//! the file, never a silent zero.

use std::fs;
use std::io;
use std::net::SocketAddr;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit read just above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

fn read(path: &str) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// The value in kB of the first line `key:` of a /proc "Key:   N kB" file.
pub fn parse_kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Proportional set size in kB, summed over `pids` (from /proc/PID/smaps_rollup).
pub fn pss_kb(pids: &[u32]) -> Result<u64, String> {
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/smaps_rollup");
        let text = read(&path)?;
        total += parse_kb_field(&text, "Pss").ok_or_else(|| format!("no Pss: line in {path}"))?;
    }
    Ok(total)
}

/// utime + stime in clock ticks from the text of /proc/PID/stat.
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')', field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds (user + system) used so far, summed over `pids`.
pub fn cpu_seconds(pids: &[u32]) -> Result<f64, String> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let mut ticks = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        ticks += parse_stat_ticks(&read(&path)?)
            .ok_or_else(|| format!("cannot parse utime/stime in {path}"))?;
    }
    Ok(ticks as f64 / hz)
}

/// This process's own CPU seconds (user + system) so far.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is valid and writable for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Kernel-side memory figures: slab kB (/proc/meminfo) and TCP buffer pages (/proc/net/sockstat).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMem {
    pub slab_kb: u64,
    pub tcp_mem_pages: u64,
}

/// The "mem" figure of the "TCP:" line of /proc/net/sockstat.
pub fn parse_sockstat_tcp_mem(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

pub fn kernel_mem() -> Result<KernelMem, String> {
    let meminfo = read("/proc/meminfo")?;
    let sockstat = read("/proc/net/sockstat")?;
    Ok(KernelMem {
        slab_kb: parse_kb_field(&meminfo, "Slab").ok_or("no Slab: in /proc/meminfo")?,
        tcp_mem_pages: parse_sockstat_tcp_mem(&sockstat).ok_or("no TCP mem in sockstat")?,
    })
}

/// Which end of a connection to `server` a /proc/net/tcp line is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The server's socket (local address = `server`).
    Server,
    /// A client's socket (remote address = `server`).
    Client,
}

/// One end's view of established connections to `server` from /proc/net/tcp or /proc/net/tcp6
/// text: (established count, how many hold unread bytes, unread bytes in all).
/// A server listening on an IPv6 socket (Java does) shows IPv4 peers as `::ffff:a.b.c.d`.
pub fn parse_sockets(text: &str, server: SocketAddr, end: End) -> (usize, usize, u64) {
    let SocketAddr::V4(v4) = server else {
        return (0, 0, 0);
    };
    // The kernel prints each 32-bit word of the address as a host-order u32 in hex.
    let ip = format!("{:08X}", u32::from_ne_bytes(v4.ip().octets()));
    let mapped = format!(
        "0000000000000000{:08X}{ip}",
        u32::from_ne_bytes([0, 0, 0xff, 0xff])
    );
    let port = format!(":{:04X}", v4.port());
    let want = [ip + &port, mapped + &port];
    let column = match end {
        End::Server => 1,
        End::Client => 2,
    };
    let mut established = 0;
    let mut unread = 0;
    let mut bytes = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().take(5).collect();
        if f.len() < 5 || f[3] != "01" || !want.iter().any(|w| w == f[column]) {
            continue;
        }
        established += 1;
        let rx = f[4].split(':').nth(1).unwrap_or("0");
        let rx = u64::from_str_radix(rx, 16).unwrap_or(0);
        if rx > 0 {
            unread += 1;
            bytes += rx;
        }
    }
    (established, unread, bytes)
}

/// `parse_sockets` over the live IPv4 and IPv6 tables; `None` when the server is not IPv4.
pub fn sockets(server: SocketAddr, end: End) -> Result<Option<(usize, usize, u64)>, String> {
    if !server.is_ipv4() {
        return Ok(None);
    }
    let (mut established, mut unread, mut bytes) =
        parse_sockets(&read("/proc/net/tcp")?, server, end);
    // Absent when the kernel has no IPv6: then no server can listen there either.
    if let Ok(text) = fs::read_to_string("/proc/net/tcp6") {
        let (e, u, b) = parse_sockets(&text, server, end);
        established += e;
        unread += u;
        bytes += b;
    }
    Ok(Some((established, unread, bytes)))
}

/// `sockets` summed over several servers (the nodes of a fleet); `None` if any is not IPv4.
pub fn sockets_all(
    servers: &[SocketAddr],
    end: End,
) -> Result<Option<(usize, usize, u64)>, String> {
    let mut sum = (0, 0, 0);
    for s in servers {
        let Some((e, u, b)) = sockets(*s, end)? else {
            return Ok(None);
        };
        sum = (sum.0 + e, sum.1 + u, sum.2 + b);
    }
    Ok(Some(sum))
}
