//! The command line (PROTOCOL.md section 1): `serve` (the default), `publish`, `stats`, `token`.
//!
//! Every bad option or combination exits 2 with exactly one line on stderr naming it; a
//! run-time start-up failure exits 1 with one line. Parsing is separate from running, so the
//! rules are unit-tested without starting anything.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use lexopt::prelude::*;
use serde_json::value::RawValue;

use crate::client;
use crate::config::{Config, Cors, DEFAULT_PUBLISH_SOCKET, MAX_CORS_ORIGINS, MAX_TIMEOUT_SECS};
use crate::fleet::{FleetOptions, RedisUrl};
use crate::query::valid_channel;
use crate::reactor::MAX_LISTENERS;

/// Default lifetime of a minted token (contract: 3600 s).
pub const DEFAULT_TOKEN_TTL: u64 = 3600;

/// One subcommand's usage: its synopsis, what it does, and one row per option (defaults in
/// brackets). Every usage text lives in this table, so an option is listed beside its siblings
/// when it is added to a parser below.
struct Usage {
    synopsis: &'static str,
    about: &'static str,
    options: &'static [(&'static str, &'static str)],
}

const SERVE_USAGE: Usage = Usage {
    synopsis: "pnsd [serve] [OPTIONS]",
    about: "Runs the server (also the default without a subcommand). Defaults in brackets.",
    options: &[
        (
            "--listen ADDR",
            "HTTP listen address, repeatable; port 0 picks a free port [127.0.0.1:8080]",
        ),
        (
            "--publish-socket PATH",
            "Unix socket for publishers [./pnsd.sock]",
        ),
        (
            "--publish-socket-mode OCTAL",
            "file mode of the publish socket, at least 0600 [0600]",
        ),
        (
            "--threads N",
            "reactor threads, one per core [number of CPUs]",
        ),
        (
            "--hold SECS",
            "hold time of a parked poll that names none [30]",
        ),
        (
            "--max-hold SECS",
            "longest hold a client may ask for with hold= [120]",
        ),
        ("--buffer N", "messages kept per channel [64]"),
        ("--message-ttl SECS", "how long a message is kept [600]"),
        (
            "--max-connections N",
            "HTTP connections held at once [open-file limit less a reserve]",
        ),
        (
            "--max-channels N",
            "channels held at once; a publish creating more is refused [1000000]",
        ),
        (
            "--max-publishers N",
            "publisher connections; one more gets an error line, is closed [64]",
        ),
        (
            "--head-timeout SECS",
            "time a request line and headers may take to arrive [10]",
        ),
        (
            "--idle-timeout SECS",
            "a keep-alive connection with no request is closed after [75]",
        ),
        (
            "--write-timeout SECS",
            "a client that does not read its answer is dropped after [30]",
        ),
        (
            "--secret-file PATH",
            "HS256 key: every poll needs a token signed with it [none: open]",
        ),
        (
            "--allow-anonymous",
            "allow a non-loopback --listen without --secret-file",
        ),
        (
            "--cors-origin ORIGIN",
            "allow browser pages of ORIGIN (repeatable; * for any) [none]",
        ),
        (
            "--sse-heartbeat SECS",
            "a comment line keeps an idle event stream open every [30]",
        ),
        (
            "--sse-max SECS",
            "an event stream ends (the browser reconnects) after [300]",
        ),
        (
            "--max-sessions N",
            "sessions held at once; a registration beyond is refused [1000000]",
        ),
        (
            "--state-file PATH",
            "drain writes the store here; start continues it (same epoch) [none]",
        ),
        (
            "--redis URL",
            "fleet mode: one log in Redis, redis://[user:pass@]host:port[/db] or redis+unix:///path [none]",
        ),
        ("--redis-prefix P", "prefix of every Redis key of this fleet [pnsd]"),
        (
            "--redis-maxlen N",
            "entries the Redis log keeps, approximately (XADD MAXLEN ~) [1000000]",
        ),
        (
            "--dedup-window SECS",
            "how long a publish line's \"key\" is remembered against retries [600]",
        ),
        (
            "--metrics-listen ADDR",
            "serve GET /metrics (Prometheus) there; loopback unless --allow-anonymous [off]",
        ),
        (
            "--access-log PATH",
            "one line per answered request, appended to PATH; - for stderr [off]",
        ),
        ("-h, --help", "print this and exit"),
    ],
};

const PUBLISH_USAGE: Usage = Usage {
    synopsis: "pnsd publish [--socket PATH] [--type N] CHANNEL JSON",
    about: "Publishes one message and prints the server's answer line. Exit 0 when it is ok,\n\
            1 when refused or the server is unreachable, 2 for a bad argument (JSON included).",
    options: &[
        ("--socket PATH", "the server's publish socket [./pnsd.sock]"),
        (
            "--type N",
            "integer message type, delivered as \"type\" [none]",
        ),
        ("-h, --help", "print this and exit"),
    ],
};

const STATS_USAGE: Usage = Usage {
    synopsis: "pnsd stats [--socket PATH]",
    about: "Prints the server's stats line as it sent it.",
    options: &[
        ("--socket PATH", "the server's publish socket [./pnsd.sock]"),
        ("-h, --help", "print this and exit"),
    ],
};

const UPGRADE_USAGE: Usage = Usage {
    synopsis: "pnsd upgrade [--socket PATH]",
    about: "Hands the running server over to the binary at its path, keeping every connection;\nexit 0 once the new process serves, 1 with the reason otherwise.",
    options: &[
        ("--socket PATH", "the server's publish socket [./pnsd.sock]"),
        ("-h, --help", "print this and exit"),
    ],
};

const TOKEN_USAGE: Usage = Usage {
    synopsis:
        "pnsd token --secret-file PATH --channel C [--channel C2 ...] [--ttl SECS] [--sub ID]",
    about: "Prints a subscriber token (HS256 JWT) granting the channels.",
    options: &[
        (
            "--secret-file PATH",
            "the key file the server uses (one trailing newline ignored)",
        ),
        (
            "--channel C",
            "a channel the token grants, repeatable, at least one",
        ),
        ("--ttl SECS", "seconds until the token expires [3600]"),
        (
            "--sub ID",
            "the sub claim, carried but not interpreted [none]",
        ),
        ("-h, --help", "print this and exit"),
    ],
};

impl Usage {
    fn text(&self) -> String {
        let mut s = format!("usage: {}\n{}\n", self.synopsis, self.about);
        let width = self.options.iter().map(|(o, _)| o.len()).max().unwrap_or(0);
        for (option, what) in self.options {
            s.push_str(&format!("  {option:width$}  {what}\n"));
        }
        s
    }
}

/// `pnsd --help`: every subcommand's usage.
fn full_usage() -> String {
    let parts: Vec<String> = [
        SERVE_USAGE,
        PUBLISH_USAGE,
        STATS_USAGE,
        UPGRADE_USAGE,
        TOKEN_USAGE,
    ]
    .iter()
    .map(Usage::text)
    .collect();
    format!(
        "pnsd {}: a long-polling push server.\n\n{}\nusage: pnsd --version\n",
        env!("CARGO_PKG_VERSION"),
        parts.join("\n")
    )
}

/// A parsed command.
#[derive(Debug)]
pub enum Cmd {
    /// Boxed: the configuration is far larger than the other commands.
    Serve(Box<Config>),
    Publish {
        socket: PathBuf,
        kind: Option<i64>,
        channel: String,
        data: String,
    },
    Stats {
        socket: PathBuf,
    },
    Upgrade {
        socket: PathBuf,
    },
    Token {
        secret_file: PathBuf,
        channels: Vec<String>,
        ttl: u64,
        sub: Option<String>,
    },
    /// Print this usage text on stdout, exit 0.
    Help(String),
    Version,
}

fn num<T: std::str::FromStr>(opt: &str, v: OsString) -> Result<T, String> {
    let s = v
        .into_string()
        .map_err(|_| format!("{opt}: not valid UTF-8"))?;
    s.parse()
        .map_err(|_| format!("{opt}: {s:?} is not a valid number"))
}

fn text(opt: &str, v: OsString) -> Result<String, String> {
    v.into_string()
        .map_err(|_| format!("{opt}: not valid UTF-8"))
}

fn addr(opt: &str, v: OsString) -> Result<SocketAddr, String> {
    let s = text(opt, v)?;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut i| i.next())
        .ok_or_else(|| format!("{opt}: {s:?} is not an address (HOST:PORT)"))
}

fn err(e: lexopt::Error) -> String {
    e.to_string()
}

/// Parses the whole command line (without the program name).
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Cmd, String> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let sub = args.first().and_then(|a| a.to_str()).map(str::to_owned);
    let rest = |args: &mut Vec<OsString>| lexopt::Parser::from_args(args.split_off(1));
    match sub.as_deref() {
        Some("serve") => parse_serve(&mut rest(&mut args)),
        Some("publish") => parse_publish(&mut rest(&mut args)),
        Some("stats") => parse_stats(&mut rest(&mut args)),
        Some("upgrade") => parse_upgrade(&mut rest(&mut args)),
        Some("token") => parse_token(&mut rest(&mut args)),
        Some("--help") | Some("-h") | Some("help") => Ok(Cmd::Help(full_usage())),
        Some("--version") | Some("-V") => Ok(Cmd::Version),
        Some(s) if !s.starts_with('-') => Err(format!("unknown command {s:?}")),
        _ => parse_serve(&mut lexopt::Parser::from_args(args)),
    }
}

/// The fleet options as given, applied once the loop has seen `--redis`.
#[derive(Default)]
struct FleetArgs {
    url: Option<String>,
    prefix: Option<String>,
    maxlen: Option<u64>,
    dedup_window_s: Option<u64>,
}

impl FleetArgs {
    /// The fleet options, or `None` without `--redis`; companions without it are an error.
    fn build(self) -> Result<Option<FleetOptions>, String> {
        let Some(url) = self.url else {
            if self.prefix.is_some() || self.maxlen.is_some() || self.dedup_window_s.is_some() {
                return Err(
                    "--redis-prefix, --redis-maxlen and --dedup-window need --redis URL".into(),
                );
            }
            return Ok(None);
        };
        let mut f = FleetOptions::new(RedisUrl::parse(&url)?);
        if let Some(p) = self.prefix {
            f.prefix = p;
        }
        if let Some(n) = self.maxlen {
            f.maxlen = n;
        }
        if let Some(w) = self.dedup_window_s {
            f.dedup_window_s = w;
        }
        f.check()?;
        Ok(Some(f))
    }
}

fn parse_serve(p: &mut lexopt::Parser) -> Result<Cmd, String> {
    let mut c = Config::default();
    let mut listen: Vec<SocketAddr> = Vec::new();
    let mut fleet = FleetArgs::default();
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Long("help") | Short('h') => return Ok(Cmd::Help(SERVE_USAGE.text())),
            Long("redis") => fleet.url = Some(text("--redis", p.value().map_err(err)?)?),
            Long("redis-prefix") => {
                fleet.prefix = Some(text("--redis-prefix", p.value().map_err(err)?)?)
            }
            Long("redis-maxlen") => {
                fleet.maxlen = Some(num("--redis-maxlen", p.value().map_err(err)?)?)
            }
            Long("dedup-window") => {
                fleet.dedup_window_s = Some(num("--dedup-window", p.value().map_err(err)?)?)
            }
            Long("listen") => listen.push(addr("--listen", p.value().map_err(err)?)?),
            Long("metrics-listen") => {
                c.metrics_listen = Some(addr("--metrics-listen", p.value().map_err(err)?)?)
            }
            Long("access-log") => {
                let path: PathBuf = p.value().map_err(err)?.into();
                if path.as_os_str().is_empty() {
                    return Err("--access-log must not be empty (- for stderr)".into());
                }
                c.access_log = Some(path);
            }
            Long("publish-socket") => c.publish_socket = p.value().map_err(err)?.into(),
            Long("publish-socket-mode") => {
                let s = text("--publish-socket-mode", p.value().map_err(err)?)?;
                let m = u32::from_str_radix(&s, 8)
                    .ok()
                    .filter(|m| *m & !0o777 == 0 && *m & 0o600 == 0o600)
                    .ok_or_else(|| {
                        format!("--publish-socket-mode: {s:?} is not an octal mode including 0600")
                    })?;
                c.publish_socket_mode = m;
            }
            Long("threads") => c.threads = num("--threads", p.value().map_err(err)?)?,
            Long("hold") => c.hold_secs = num("--hold", p.value().map_err(err)?)?,
            Long("max-hold") => c.max_hold_secs = num("--max-hold", p.value().map_err(err)?)?,
            Long("buffer") => c.buffer = num("--buffer", p.value().map_err(err)?)?,
            Long("message-ttl") => {
                c.message_ttl_secs = num("--message-ttl", p.value().map_err(err)?)?
            }
            Long("max-connections") => {
                c.max_connections = Some(num("--max-connections", p.value().map_err(err)?)?)
            }
            Long("max-channels") => {
                c.max_channels = num("--max-channels", p.value().map_err(err)?)?
            }
            Long("max-publishers") => {
                c.max_publishers = num("--max-publishers", p.value().map_err(err)?)?
            }
            Long("secret-file") => c.secret_file = Some(p.value().map_err(err)?.into()),
            Long("state-file") => c.state_file = Some(p.value().map_err(err)?.into()),
            Long("allow-anonymous") => c.allow_anonymous = true,
            Long("cors-origin") => {
                let o = text("--cors-origin", p.value().map_err(err)?)?;
                if o.is_empty() || o.bytes().any(|b| b.is_ascii_control()) {
                    return Err("--cors-origin: must be a non-empty header value".into());
                }
                c.cors = match (std::mem::take(&mut c.cors), o.as_str()) {
                    (_, "*") => Cors::Any,
                    (Cors::Any, _) => Cors::Any,
                    (Cors::Off, _) => Cors::List(vec![o]),
                    (Cors::List(mut l), _) => {
                        if !l.contains(&o) {
                            l.push(o);
                        }
                        if l.len() > MAX_CORS_ORIGINS {
                            return Err(format!(
                                "--cors-origin: at most {MAX_CORS_ORIGINS} origins"
                            ));
                        }
                        Cors::List(l)
                    }
                };
            }
            Long("sse-heartbeat") => {
                c.sse_heartbeat_secs = num("--sse-heartbeat", p.value().map_err(err)?)?
            }
            Long("sse-max") => c.sse_max_secs = num("--sse-max", p.value().map_err(err)?)?,
            Long("max-sessions") => {
                c.max_sessions = num("--max-sessions", p.value().map_err(err)?)?
            }
            Long("head-timeout") => {
                c.head_timeout_secs = num("--head-timeout", p.value().map_err(err)?)?
            }
            Long("idle-timeout") => {
                c.idle_timeout_secs = num("--idle-timeout", p.value().map_err(err)?)?
            }
            Long("write-timeout") => {
                c.write_timeout_secs = num("--write-timeout", p.value().map_err(err)?)?
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    // Port 0 twice is two free ports; an explicit address twice cannot be bound twice.
    for (i, a) in listen.iter().enumerate() {
        if a.port() != 0 && listen[..i].contains(a) {
            return Err(format!("--listen {a} is given twice"));
        }
    }
    for (name, secs) in [
        ("--head-timeout", c.head_timeout_secs),
        ("--idle-timeout", c.idle_timeout_secs),
        ("--write-timeout", c.write_timeout_secs),
        ("--sse-heartbeat", c.sse_heartbeat_secs),
        ("--sse-max", c.sse_max_secs),
    ] {
        if secs == 0 || secs > MAX_TIMEOUT_SECS {
            return Err(format!(
                "{name} must be between 1 and {MAX_TIMEOUT_SECS} seconds"
            ));
        }
    }
    if !listen.is_empty() {
        c.listen = listen;
    }
    c.fleet = fleet.build()?.map(Box::new);
    if c.listen.len() > MAX_LISTENERS {
        return Err(format!("at most {MAX_LISTENERS} --listen addresses"));
    }
    if c.threads == 0 || c.threads > 1024 {
        return Err("--threads must be between 1 and 1024".into());
    }
    if c.hold_secs > c.max_hold_secs {
        return Err(format!(
            "--hold {} is above --max-hold {}",
            c.hold_secs, c.max_hold_secs
        ));
    }
    if c.max_hold_secs > 86_400 {
        return Err("--max-hold must be at most 86400 seconds".into());
    }
    if c.buffer == 0 || c.buffer > 1_000_000 {
        return Err("--buffer must be between 1 and 1000000".into());
    }
    if c.message_ttl_secs == 0 {
        return Err("--message-ttl must be at least 1 second".into());
    }
    if c.max_channels == 0 {
        return Err("--max-channels must be at least 1".into());
    }
    if c.max_publishers == 0 {
        return Err("--max-publishers must be at least 1".into());
    }
    if c.max_connections == Some(0) {
        return Err("--max-connections must be at least 1".into());
    }
    if c.publish_socket.as_os_str().is_empty() {
        return Err("--publish-socket must not be empty".into());
    }
    // A token protects polls, not the figures: only --allow-anonymous opens /metrics wider.
    if let Some(a) = c.metrics_listen.filter(|a| !a.ip().is_loopback()) {
        if !c.allow_anonymous {
            return Err(format!(
                "--metrics-listen {a} is not loopback: give --allow-anonymous to serve the figures to anyone who can reach it"
            ));
        }
    }
    if c.secret_file.is_none() && !c.allow_anonymous {
        if let Some(a) = c.listen.iter().find(|a| !a.ip().is_loopback()) {
            return Err(format!(
                "--listen {a} is not loopback: give --secret-file, or --allow-anonymous to serve open channels"
            ));
        }
    }
    Ok(Cmd::Serve(Box::new(c)))
}

fn parse_publish(p: &mut lexopt::Parser) -> Result<Cmd, String> {
    let mut socket = PathBuf::from(DEFAULT_PUBLISH_SOCKET);
    let mut kind = None;
    let mut values = Vec::new();
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Long("help") | Short('h') => return Ok(Cmd::Help(PUBLISH_USAGE.text())),
            Long("socket") => socket = p.value().map_err(err)?.into(),
            Long("type") => kind = Some(num("--type", p.value().map_err(err)?)?),
            Value(v) => values.push(text("argument", v)?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let [channel, data]: [String; 2] = values
        .try_into()
        .map_err(|_| "publish takes CHANNEL and JSON".to_string())?;
    if !valid_channel(&channel) {
        return Err(format!(
            "invalid channel name {channel:?} (1-128 bytes of A-Z a-z 0-9 _ . : @ -)"
        ));
    }
    // Only the grammar is checked here, so the error points into what the user typed; the
    // server decides everything else (nesting depth, number range, duplicate keys).
    serde_json::from_str::<&RawValue>(&data).map_err(|e| format!("JSON is not valid: {e}"))?;
    Ok(Cmd::Publish {
        socket,
        kind,
        channel,
        data,
    })
}

fn parse_upgrade(p: &mut lexopt::Parser) -> Result<Cmd, String> {
    let mut socket = PathBuf::from(DEFAULT_PUBLISH_SOCKET);
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Long("help") | Short('h') => return Ok(Cmd::Help(UPGRADE_USAGE.text())),
            Long("socket") => socket = p.value().map_err(err)?.into(),
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(Cmd::Upgrade { socket })
}

fn parse_stats(p: &mut lexopt::Parser) -> Result<Cmd, String> {
    let mut socket = PathBuf::from(DEFAULT_PUBLISH_SOCKET);
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Long("help") | Short('h') => return Ok(Cmd::Help(STATS_USAGE.text())),
            Long("socket") => socket = p.value().map_err(err)?.into(),
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(Cmd::Stats { socket })
}

fn parse_token(p: &mut lexopt::Parser) -> Result<Cmd, String> {
    let mut secret_file = None;
    let mut channels: Vec<String> = Vec::new();
    let mut ttl = DEFAULT_TOKEN_TTL;
    let mut sub = None;
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Long("help") | Short('h') => return Ok(Cmd::Help(TOKEN_USAGE.text())),
            Long("secret-file") => secret_file = Some(PathBuf::from(p.value().map_err(err)?)),
            Long("channel") => {
                let c = text("--channel", p.value().map_err(err)?)?;
                if !valid_channel(&c) {
                    return Err(format!(
                        "invalid channel name {c:?} (1-128 bytes of A-Z a-z 0-9 _ . : @ -)"
                    ));
                }
                if !channels.contains(&c) {
                    channels.push(c);
                }
            }
            Long("ttl") => ttl = num("--ttl", p.value().map_err(err)?)?,
            Long("sub") => sub = Some(text("--sub", p.value().map_err(err)?)?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let secret_file = secret_file.ok_or("token needs --secret-file")?;
    if channels.is_empty() {
        return Err("token needs at least one --channel".into());
    }
    if ttl == 0 {
        return Err("--ttl must be at least 1 second".into());
    }
    Ok(Cmd::Token {
        secret_file,
        channels,
        ttl,
        sub,
    })
}

/// Runs the process: parses, dispatches, returns the exit status.
pub fn main() -> i32 {
    let cmd = match parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pnsd: {e}");
            return 2;
        }
    };
    match cmd {
        Cmd::Help(text) => {
            print!("{text}");
            0
        }
        Cmd::Version => {
            println!("pnsd {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Cmd::Serve(config) => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
                .init();
            match crate::server::serve(*config) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("pnsd: {}", e.message());
                    e.exit_code()
                }
            }
        }
        Cmd::Publish {
            socket,
            kind,
            channel,
            data,
        } => client::publish(&socket, kind, &channel, &data),
        Cmd::Stats { socket } => client::stats(&socket),
        Cmd::Upgrade { socket } => client::upgrade(&socket),
        Cmd::Token {
            secret_file,
            channels,
            ttl,
            sub,
        } => client::token(&secret_file, &channels, ttl, sub.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Cmd, String> {
        parse(s.split_whitespace().map(OsString::from))
    }

    fn serve(s: &str) -> Config {
        match parse_str(s) {
            Ok(Cmd::Serve(c)) => *c,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn serve_defaults_and_options() {
        let c = serve("");
        assert_eq!(c.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(
            (c.hold_secs, c.max_hold_secs, c.buffer, c.message_ttl_secs),
            (30, 120, 64, 600)
        );
        let c = serve("--listen 127.0.0.1:0 --listen [::1]:0 --threads 3 --hold 5 --max-hold 10");
        assert_eq!((c.listen.len(), c.threads, c.hold_secs), (2, 3, 5));
        let c = serve("serve --buffer 2 --message-ttl 9 --max-connections 5 --cors-origin *");
        assert_eq!(
            (c.buffer, c.message_ttl_secs, c.max_connections),
            (2, 9, Some(5))
        );
        assert_eq!(c.cors, Cors::Any);
        assert_eq!(
            (
                c.head_timeout_secs,
                c.idle_timeout_secs,
                c.write_timeout_secs
            ),
            (10, 75, 30)
        );
        let c = serve("--head-timeout 1 --idle-timeout 2 --write-timeout 3");
        assert_eq!(
            (
                c.head_timeout_secs,
                c.idle_timeout_secs,
                c.write_timeout_secs
            ),
            (1, 2, 3)
        );
        let c = serve("--listen 0.0.0.0:0 --allow-anonymous");
        assert!(c.allow_anonymous);
        assert_eq!(c.max_channels, 1_000_000);
        assert_eq!(serve("--max-channels 7").max_channels, 7);
        assert_eq!(c.max_publishers, crate::config::DEFAULT_MAX_PUBLISHERS);
        assert_eq!(serve("--max-publishers 3").max_publishers, 3);
        let c = serve("--listen 0.0.0.0:0 --secret-file /x");
        assert!(c.secret_file.is_some());
        assert_eq!((c.metrics_listen, c.access_log.clone()), (None, None));
        let c = serve("--metrics-listen 127.0.0.1:9090 --access-log -");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.access_log, Some(PathBuf::from("-")));
        let c = serve("--metrics-listen 0.0.0.0:9090 --allow-anonymous");
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9090".parse().unwrap()));
    }

    #[test]
    fn metrics_off_loopback_needs_allow_anonymous_even_with_a_secret() {
        for bad in [
            "--metrics-listen 0.0.0.0:9090",
            "--metrics-listen 0.0.0.0:9090 --secret-file /x",
            "--metrics-listen nowhere",
        ] {
            let e = parse_str(bad).expect_err(bad);
            assert!(e.contains("--metrics-listen"), "{bad}: {e}");
        }
    }

    #[test]
    fn fleet_options() {
        assert!(serve("").fleet.is_none());
        let c =
            serve("--redis redis://u:pw@h:7/2 --redis-prefix p1 --redis-maxlen 9 --dedup-window 5");
        let f = c.fleet.expect("fleet options");
        assert_eq!(
            (f.prefix.as_str(), f.maxlen, f.dedup_window_s),
            ("p1", 9, 5)
        );
        assert_eq!(f.url.display(), "redis://u:***@h:7/2");
        let f = serve("--redis redis+unix:///run/r.sock")
            .fleet
            .expect("fleet");
        assert_eq!(f.maxlen, crate::fleet::DEFAULT_MAXLEN);
        assert_eq!(f.dedup_window_s, crate::fleet::DEFAULT_DEDUP_WINDOW_S);
        for bad in [
            "--redis-maxlen 5",
            "--redis ftp://h",
            "--redis redis://h:1 --redis-maxlen 0",
            "--redis redis://h:1 --dedup-window x",
        ] {
            assert!(parse_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_serve_options() {
        for bad in [
            "--hold 200",
            "--hold 20 --max-hold 10",
            "--threads 0",
            "--threads x",
            "--buffer 0",
            "--message-ttl 0",
            "--max-connections 0",
            "--max-channels 0",
            "--max-channels x",
            "--max-publishers 0",
            "--max-publishers -1",
            "--listen nowhere",
            "--listen 0.0.0.0:8080",
            "--bogus",
            "--hold",
            "serve extra",
            "frobnicate",
            "--publish-socket-mode 0644x",
            "--publish-socket-mode 0400",
            "--head-timeout 0",
            "--idle-timeout 86401",
            "--write-timeout x",
        ] {
            assert!(parse_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subcommands() {
        match parse_str("publish --socket /s --type 7 user:1 {\"a\":1}") {
            Ok(Cmd::Publish {
                socket,
                kind,
                channel,
                data,
            }) => {
                assert_eq!(socket, PathBuf::from("/s"));
                assert_eq!(
                    (kind, channel.as_str(), data.as_str()),
                    (Some(7), "user:1", "{\"a\":1}")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_str("publish onlyone").is_err());
        assert!(parse_str("publish bad/name 1").is_err());
        assert!(matches!(parse_str("stats"), Ok(Cmd::Stats { .. })));
        match parse_str("token --secret-file /k --channel a --channel b --channel a --sub u") {
            Ok(Cmd::Token {
                channels, ttl, sub, ..
            }) => {
                assert_eq!(
                    (channels, ttl, sub.as_deref()),
                    (vec!["a".into(), "b".into()], 3600, Some("u"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_str("token --channel a").is_err());
        assert!(parse_str("token --secret-file /k").is_err());
    }

    fn help_text(s: &str) -> String {
        match parse_str(s) {
            Ok(Cmd::Help(text)) => text,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn every_subcommand_answers_help() {
        for (args, synopsis, option) in [
            ("serve --help", "usage: pnsd [serve]", "--max-connections N"),
            ("serve -h", "usage: pnsd [serve]", "--cors-origin ORIGIN"),
            (
                "--listen 127.0.0.1:0 --help",
                "usage: pnsd [serve]",
                "--listen ADDR",
            ),
            ("publish --help", "usage: pnsd publish", "--type N"),
            ("publish a -h", "usage: pnsd publish", "--socket PATH"),
            ("stats --help", "usage: pnsd stats", "--socket PATH"),
            ("token -h", "usage: pnsd token", "--ttl SECS"),
            // Help wins over what is still missing (token's required options).
            ("token --channel a --help", "usage: pnsd token", "--sub ID"),
        ] {
            let text = help_text(args);
            assert!(text.starts_with(synopsis), "{args}: {text}");
            assert!(text.contains(option), "{args}: {text}");
            assert_eq!(text.matches("usage:").count(), 1, "{args}: {text}");
        }
        let all = help_text("--help");
        for synopsis in ["pnsd [serve]", "pnsd publish", "pnsd stats", "pnsd token"] {
            assert!(all.contains(&format!("usage: {synopsis}")), "{all}");
        }
        assert_eq!(all, help_text("-h"));
    }

    #[test]
    fn the_same_listen_address_twice_is_a_bad_combination() {
        let e = parse_str("--listen 127.0.0.1:8081 --listen 127.0.0.1:8081").unwrap_err();
        assert!(e.contains("127.0.0.1:8081") && e.contains("twice"), "{e}");
        assert!(parse_str("--listen localhost:8081 --listen 127.0.0.1:8081").is_err());
        // Port 0 twice asks for two free ports.
        assert_eq!(
            serve("--listen 127.0.0.1:0 --listen 127.0.0.1:0")
                .listen
                .len(),
            2
        );
        assert_eq!(
            serve("--listen 127.0.0.1:1 --listen 127.0.0.2:1")
                .listen
                .len(),
            2
        );
    }

    #[test]
    fn publish_json_is_checked_against_what_the_user_typed() {
        let e = parse_str("publish user:42 hello").unwrap_err();
        assert_eq!(e, "JSON is not valid: expected value at line 1 column 1");
        let e = parse_str("publish a {\"a\":1,}").unwrap_err();
        assert!(
            e.starts_with("JSON is not valid:") && e.ends_with("column 8"),
            "{e}"
        );
        assert!(parse_str("publish a 1 2").is_err());
        assert!(parse_str("publish a [1]x")
            .unwrap_err()
            .contains("trailing"));
        // Any JSON value is data; what only the server decides (depth, number range,
        // duplicate keys) passes the local check.
        for data in [
            "null",
            "\"hello\"",
            "[[[[1]]]]",
            "1e999",
            "{\"a\":1,\"a\":2}",
        ] {
            match parse_str(&format!("publish a {data}")) {
                Ok(Cmd::Publish { data: d, .. }) => assert_eq!(d, data),
                other => panic!("{data}: {other:?}"),
            }
        }
    }
}
