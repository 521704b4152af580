//! The process figures of `/metrics`, read from `/proc/self` at scrape time (the standard
//! `process_*` names every Prometheus client library exports, so existing dashboards work).
//!
//! Invariants: read only by the metrics thread, never on a reactor; a figure that cannot be
//! read (no procfs) is left out of the output rather than reported as 0.

use std::fs;

/// What `/proc/self` says of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl Process {
    pub fn read() -> Process {
        let (virtual_bytes, resident_bytes) = statm().unzip();
        Process {
            resident_bytes,
            virtual_bytes,
            cpu_seconds: cpu_seconds(),
            open_fds: fs::read_dir("/proc/self/fd")
                .ok()
                // The directory handle itself is one of the entries while it is read.
                .map(|d| (d.count() as u64).saturating_sub(1)),
            max_fds: max_fds(),
        }
    }
}

/// (virtual, resident) bytes from `/proc/self/statm` (in pages).
fn statm() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/self/statm").ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (size, resident) = (f.next()??, f.next()??);
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).ok().filter(|p| *p > 0)?;
    Some((size * page, resident * page))
}

/// User + system CPU time from `/proc/self/stat` (fields 14 and 15, in clock ticks).
fn cpu_seconds() -> Option<f64> {
    cpu_seconds_of(&fs::read_to_string("/proc/self/stat").ok()?)
}

fn cpu_seconds_of(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some((utime + stime) as f64 / ticks as f64)
}

/// The soft open-file limit.
fn max_fds() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Some(lim.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        let stat = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0";
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(cpu_seconds_of(stat), Some(400.0 / ticks));
        assert_eq!(cpu_seconds_of("garbage"), None);
    }

    #[test]
    fn this_process_has_figures() {
        let p = Process::read();
        assert!(p.resident_bytes.is_some_and(|b| b > 0));
        assert!(p.open_fds.is_some_and(|n| n >= 3));
        assert!(p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap_or(0)));
        assert!(p.cpu_seconds.is_some());
    }
}
