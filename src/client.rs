//! The small clients: `pnsd publish`, `pnsd stats`, `pnsd upgrade` (one line each over the
//! publish socket) and `pnsd token` (mints a subscriber token).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::token::{self, Secret};

/// How long a client waits for the server's answer line.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How long `pnsd upgrade` waits: the server's own take-over deadline
/// (`upgrade::TAKEOVER_WAIT`) plus time to freeze and to thaw after a failure.
const UPGRADE_WAIT: Duration = Duration::from_secs(30);

/// Sends one line and returns the answer line (without its newline).
fn exchange(socket: &Path, line: &str) -> Result<String, String> {
    exchange_within(socket, line, ANSWER_WAIT)
}

fn exchange_within(socket: &Path, line: &str, wait: Duration) -> Result<String, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    s.write_all(line.as_bytes())
        .and_then(|_| s.write_all(b"\n"))
        .map_err(|e| format!("cannot send to {}: {e}", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from {}: {e}", socket.display()))?;
    if answer.is_empty() {
        return Err(format!("{} closed without answering", socket.display()));
    }
    Ok(answer.trim_end().to_string())
}

fn print_answer(answer: Result<String, String>) -> i32 {
    match answer {
        Ok(line) => {
            println!("{line}");
            let ok = serde_json::from_str::<serde_json::Value>(&line)
                .map(|v| v["ok"] == serde_json::Value::Bool(true))
                .unwrap_or(false);
            if ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("pnsd: {e}");
            1
        }
    }
}

/// The request line of `pnsd publish`. `data` is sent as given; raw CR/LF (which valid JSON
/// can only hold as whitespace between tokens) become spaces so the line stays one line.
pub fn publish_line(kind: Option<i64>, channel: &str, data: &str) -> String {
    let data = data.replace(['\n', '\r'], " ");
    let mut line = String::from("{\"channel\":");
    line.push_str(&serde_json::to_string(channel).unwrap_or_default());
    if let Some(k) = kind {
        line.push_str(&format!(",\"type\":{k}"));
    }
    line.push_str(",\"data\":");
    line.push_str(&data);
    line.push('}');
    line
}

pub fn publish(socket: &Path, kind: Option<i64>, channel: &str, data: &str) -> i32 {
    print_answer(exchange(socket, &publish_line(kind, channel, data)))
}

pub fn stats(socket: &Path) -> i32 {
    print_answer(exchange(socket, "{\"op\":\"stats\"}"))
}

/// `pnsd upgrade`: 0 once the new binary has taken over (its answer line on stdout), 1 with the
/// reason on one stderr line otherwise.
pub fn upgrade(socket: &Path) -> i32 {
    let line = match exchange_within(socket, "{\"op\":\"upgrade\"}", UPGRADE_WAIT) {
        Ok(line) => line,
        Err(e) => {
            eprintln!("pnsd: upgrade failed: {e}");
            return 1;
        }
    };
    let v = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default();
    if v["ok"] == serde_json::Value::Bool(true) {
        println!("{line}");
        return 0;
    }
    match v["error"].as_str() {
        Some(e) => eprintln!("pnsd: upgrade failed: {e}"),
        None => eprintln!("pnsd: upgrade failed: {line}"),
    }
    1
}

pub fn token(secret_file: &Path, channels: &[String], ttl: u64, sub: Option<&str>) -> i32 {
    let secret = match Secret::from_file(secret_file) {
        Ok(s) => s,
        Err(e) => {
            // The file's absence is a run-time failure, not a bad argument.
            eprintln!("pnsd: cannot read {}: {e}", secret_file.display());
            return 1;
        }
    };
    let exp = (token::unix_now() as u64).saturating_add(ttl);
    println!("{}", token::mint(&secret, channels, exp, sub));
    0
}
