//! The command line (PROTOCOL.md section 1): `serve` (the default), `publish`, `stats`, `token`.
//!
//! Every bad option or combination exits 2 with exactly one line on stderr naming it; a
//! run-time start-up failure exits 1 with one line. Parsing is separate from running, so the
//! rules are unit-tested without starting anything.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::client;
use crate::config::{Config, DEFAULT_PUBLISH_SOCKET, MAX_TIMEOUT_SECS};
use crate::query::valid_channel;
use crate::reactor::MAX_LISTENERS;

/// Default lifetime of a minted token (contract: 3600 s).
pub const DEFAULT_TOKEN_TTL: u64 = 3600;

const USAGE: &str = "usage: pnsd [serve] [--listen ADDR]... [--publish-socket PATH] [--threads N] [--hold SECS] [--max-hold SECS] [--buffer N] [--message-ttl SECS] [--max-connections N] [--secret-file PATH] [--allow-anonymous] [--cors-origin ORIGIN] [--publish-socket-mode OCTAL] [--head-timeout SECS] [--idle-timeout SECS] [--write-timeout SECS]
       pnsd publish [--socket PATH] [--type N] CHANNEL JSON
       pnsd stats [--socket PATH]
       pnsd token --secret-file PATH --channel C [--channel C2 ...] [--ttl SECS] [--sub ID]";

/// A parsed command.
#[derive(Debug)]
pub enum Cmd {
    Serve(Config),
    Publish {
        socket: PathBuf,
        kind: Option<i64>,
        channel: String,
        data: String,
    },
    Stats {
        socket: PathBuf,
    },
    Token {
        secret_file: PathBuf,
        channels: Vec<String>,
        ttl: u64,
        sub: Option<String>,
    },
    Help,
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

fn addr(v: OsString) -> Result<SocketAddr, String> {
    let s = text("--listen", v)?;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut i| i.next())
        .ok_or_else(|| format!("--listen: {s:?} is not an address (HOST:PORT)"))
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
        Some("token") => parse_token(&mut rest(&mut args)),
        Some("--help") | Some("-h") | Some("help") => Ok(Cmd::Help),
        Some("--version") | Some("-V") => Ok(Cmd::Version),
        Some(s) if !s.starts_with('-') => Err(format!("unknown command {s:?}")),
        _ => parse_serve(&mut lexopt::Parser::from_args(args)),
    }
}

fn parse_serve(p: &mut lexopt::Parser) -> Result<Cmd, String> {
    let mut c = Config::default();
    let mut listen: Vec<SocketAddr> = Vec::new();
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Long("listen") => listen.push(addr(p.value().map_err(err)?)?),
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
            Long("secret-file") => c.secret_file = Some(p.value().map_err(err)?.into()),
            Long("allow-anonymous") => c.allow_anonymous = true,
            Long("cors-origin") => {
                let o = text("--cors-origin", p.value().map_err(err)?)?;
                if o.is_empty() || o.bytes().any(|b| b.is_ascii_control()) {
                    return Err("--cors-origin: must be a non-empty header value".into());
                }
                c.cors_origin = Some(o);
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
    for (name, secs) in [
        ("--head-timeout", c.head_timeout_secs),
        ("--idle-timeout", c.idle_timeout_secs),
        ("--write-timeout", c.write_timeout_secs),
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
    if c.max_connections == Some(0) {
        return Err("--max-connections must be at least 1".into());
    }
    if c.publish_socket.as_os_str().is_empty() {
        return Err("--publish-socket must not be empty".into());
    }
    if c.secret_file.is_none() && !c.allow_anonymous {
        if let Some(a) = c.listen.iter().find(|a| !a.ip().is_loopback()) {
            return Err(format!(
                "--listen {a} is not loopback: give --secret-file, or --allow-anonymous to serve open channels"
            ));
        }
    }
    Ok(Cmd::Serve(c))
}

fn parse_publish(p: &mut lexopt::Parser) -> Result<Cmd, String> {
    let mut socket = PathBuf::from(DEFAULT_PUBLISH_SOCKET);
    let mut kind = None;
    let mut values = Vec::new();
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
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
    Ok(Cmd::Publish {
        socket,
        kind,
        channel,
        data,
    })
}

fn parse_stats(p: &mut lexopt::Parser) -> Result<Cmd, String> {
    let mut socket = PathBuf::from(DEFAULT_PUBLISH_SOCKET);
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
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
        Cmd::Help => {
            println!("{USAGE}");
            0
        }
        Cmd::Version => {
            println!("pnsd {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Cmd::Serve(config) => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
                .init();
            match crate::server::serve(config) {
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
            Ok(Cmd::Serve(c)) => c,
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
        assert_eq!(c.cors_origin.as_deref(), Some("*"));
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
        let c = serve("--listen 0.0.0.0:0 --secret-file /x");
        assert!(c.secret_file.is_some());
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
}
