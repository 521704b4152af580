//! "The server's state": the one serialisable form of what another process needs to continue
//! this server without a client noticing, written by the `--state-file` drain and read at a
//! start with that option.
//!
//! Format: one JSON object (serde_json, already a dependency: an operator can read a state
//! file, and a store of 100k messages encodes and decodes in tens of milliseconds), whose
//! `version` is checked before anything else is interpreted: an image of another version is
//! refused whole, never half read. Bump `VERSION` with any change of meaning or layout.
//!
//! Invariants:
//! - Times in the image are remaining durations (see `store::image`) plus the wall-clock time
//!   it was written, so a reader subtracts the time the image spent on disk; clock values of
//!   the writing process mean nothing to the reader.
//! - `generation` counts the processes this state has lived in: 1 at a first start, +1 each
//!   time a process takes it over (a start from a state file counts: the state moved to a new
//!   process, as in an upgrade).
//! - A state file is replaced atomically (temporary file in the same directory, fsync, rename,
//!   fsync of the directory): a crash while writing leaves the previous file or none, never a
//!   torn one.
//! - Loading never fails the start: a missing, stale (older than `--message-ttl`, so every
//!   message in it expired), unreadable, corrupt or unknown-version file is logged and the
//!   server starts a new epoch.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::hub::Hub;
use crate::session::SessionImage;
use crate::store::{Store, StoreImage};

/// Version of the image layout this binary writes and the only one it reads.
pub const VERSION: u32 = 1;

/// See the module documentation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerState {
    pub version: u32,
    pub generation: u64,
    /// Wall-clock milliseconds since the Unix epoch when the image was taken.
    pub written_unix_ms: u64,
    pub store: StoreImage,
    /// The registered sessions (`session`), with their positions.
    #[serde(default)]
    pub sessions: Vec<SessionImage>,
    /// The live part, handed over by an upgrade only (a state file has none): descriptors and
    /// what each connection was doing.
    #[serde(default)]
    pub live: Option<LiveImage>,
}

/// Descriptors inherited by the new process and the state of each connection on them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LiveImage {
    /// Each reactor's HTTP listeners (one per address), by reactor.
    pub http_listeners: Vec<Vec<i32>>,
    /// Each reactor's HTTP connections, by reactor.
    pub conns: Vec<Vec<ConnImage>>,
    pub publish_listener: i32,
    /// The publish socket's file as the first process bound it (removed at the last drain only
    /// while still that file); `None` when the socket was inherited from a service manager.
    pub socket_file: Option<SocketFileImage>,
    pub publishers: Vec<PublisherImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketFileImage {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// One HTTP connection (`conn`): its phase, flags and buffered bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnImage {
    pub fd: i32,
    /// `conn`'s flag bits (close after, readable, read closed, token timer, stream) and its
    /// phase (bits 5-6: 0 head, 1 idle, 2 parked).
    pub flags: u8,
    /// The parked request's CORS match (`config::Cors::matching`).
    pub cors: u8,
    /// An event stream's heartbeats left.
    pub beats: u16,
    /// The parked poll's cursor seq.
    pub after: u64,
    /// The parked poll's channels, in subscription order.
    pub channels: Vec<String>,
    /// Milliseconds until its timer (hold, token, head, idle or write deadline) fires.
    pub timer_ms: Option<u64>,
    /// Received bytes not yet parsed, and body bytes still to skip.
    pub input: Vec<u8>,
    pub skip: u64,
    /// Response bytes not yet written.
    pub out: Vec<u8>,
}

/// One publisher connection (`publish`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublisherImage {
    pub fd: i32,
    /// Received bytes not yet answered, and whether the framer is inside an overlong line.
    pub input: Vec<u8>,
    pub discarding: bool,
    /// Answer lines not yet written.
    pub out: Vec<u8>,
    pub eof: bool,
    /// It asked for this upgrade: the new process answers it `line::upgrade_line`.
    pub asked_upgrade: bool,
}

/// Only the version, read first so that any later layout is refused by its number.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// Wall-clock milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ServerState {
    /// The state of `store` at clock time `now_ms`, as generation `generation`'s.
    pub fn of(store: &Store, now_ms: u64, generation: u64) -> ServerState {
        ServerState {
            version: VERSION,
            generation,
            written_unix_ms: unix_ms(),
            store: store.snapshot(now_ms),
            sessions: Vec::new(),
            live: None,
        }
    }

    /// The state of the server `hub` serves: its store and its sessions.
    pub fn of_hub(hub: &Hub) -> ServerState {
        let now_ms = hub.clock.now_ms();
        let mut state = ServerState::of(&hub.read(), now_ms, hub.generation);
        state.sessions = hub.sessions.snapshot(now_ms);
        state
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes an image, refusing any version but `VERSION`.
    pub fn decode(bytes: &[u8]) -> Result<ServerState, String> {
        let v: VersionOnly =
            serde_json::from_slice(bytes).map_err(|e| format!("not a state image: {e}"))?;
        if v.version != VERSION {
            return Err(format!(
                "state version {} is not the version {VERSION} this binary reads",
                v.version
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("corrupt state image: {e}"))
    }

    /// Milliseconds since the image was taken (0 if the wall clock went back).
    pub fn age_ms(&self) -> u64 {
        unix_ms().saturating_sub(self.written_unix_ms)
    }
}

/// Writes `state` to `path` atomically (see the module documentation).
pub fn write_file(path: &Path, state: &ServerState) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&state.encode())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes the store's state for the next start (`--state-file`), after the drain: no publish
/// is accepted any more, so the image holds every acked message.
pub fn save(hub: &Hub, path: &Path) {
    let state = ServerState::of_hub(hub);
    match write_file(path, &state) {
        Ok(()) => info!(
            "state written to {} (epoch {:x}, seq {})",
            path.display(),
            state.store.epoch,
            state.store.last_seq
        ),
        Err(e) => warn!(
            "cannot write state file {}: {e}; the next start begins a new epoch",
            path.display()
        ),
    }
}

/// The state in `path`, if it is usable by a server keeping messages `ttl_ms`: `None` (and
/// why, logged) when it is missing, unreadable, corrupt, of another version or stale.
pub fn read_file(path: &Path, ttl_ms: u64) -> Option<ServerState> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            info!(
                "state file {} not found: starting a new epoch",
                path.display()
            );
            return None;
        }
        Err(e) => {
            warn!(
                "cannot read state file {}: {e}; starting a new epoch",
                path.display()
            );
            return None;
        }
    };
    let state = match ServerState::decode(&bytes) {
        Ok(s) => s,
        Err(e) => {
            warn!(
                "state file {} ignored: {e}; starting a new epoch",
                path.display()
            );
            return None;
        }
    };
    let age = state.age_ms();
    if age >= ttl_ms {
        warn!(
            "state file {} ignored: written {} s ago, beyond --message-ttl; starting a new epoch",
            path.display(),
            age / 1000
        );
        return None;
    }
    Some(state)
}

/// What a start continues from a state file.
#[derive(Debug)]
pub struct Continued {
    pub store: Store,
    /// This process's generation.
    pub generation: u64,
    pub sessions: Vec<SessionImage>,
    /// How long ago the file was written.
    pub age_ms: u64,
}

/// The store and generation a start with `--state-file path` continues: the file's, restored
/// with this process's limits, or `None` (logged) when it cannot be used.
pub fn load_store(
    path: &Path,
    buffer: usize,
    ttl_ms: u64,
    max_channels: usize,
    now_ms: u64,
) -> Option<Continued> {
    let state = read_file(path, ttl_ms)?;
    let age = state.age_ms();
    match Store::restore(state.store, buffer, ttl_ms, max_channels, now_ms, age) {
        Ok(store) => {
            info!(
                "state file {}: continuing epoch {:x} at seq {} (written {age} ms ago)",
                path.display(),
                store.epoch(),
                store.last_seq()
            );
            Some(Continued {
                store,
                generation: state.generation + 1,
                sessions: state.sessions,
                age_ms: age,
            })
        }
        Err(e) => {
            warn!(
                "state file {} ignored: {e}; starting a new epoch",
                path.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_store() -> Store {
        let mut s = Store::new(42, 8, 60_000, 100);
        let chans: Box<[Box<str>]> = vec![Box::from("a")].into_boxed_slice();
        s.publish(chans, None, "\"hi\"", 0).expect("room");
        s
    }

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pnsd-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir.join("state.json")
    }

    #[test]
    fn a_written_file_loads_as_the_next_generation_of_the_same_epoch() {
        let path = temp_path("roundtrip");
        write_file(&path, &ServerState::of(&sample_store(), 10, 3)).expect("written");
        let Continued {
            store, generation, ..
        } = load_store(&path, 8, 60_000, 100, 0).expect("loads");
        assert_eq!(generation, 4);
        assert_eq!(store.epoch(), 42);
        assert_eq!(store.last_seq(), 1);
        assert_eq!(store.read(&["a"], 0, 0, 10).messages.len(), 1);
        let leftovers = fs::read_dir(path.parent().expect("dir"))
            .expect("dir")
            .count();
        assert_eq!(leftovers, 1, "no temporary file left");
    }

    #[test]
    fn bad_files_are_ignored() {
        let path = temp_path("bad");
        assert!(load_store(&path, 8, 60_000, 100, 0).is_none(), "missing");
        fs::write(&path, b"{\"version\":1,\"generation\":").expect("write");
        assert!(load_store(&path, 8, 60_000, 100, 0).is_none(), "torn");
        let mut state = ServerState::of(&sample_store(), 10, 1);
        state.version = VERSION + 1;
        fs::write(&path, state.encode()).expect("write");
        assert!(load_store(&path, 8, 60_000, 100, 0).is_none(), "version");
        let mut state = ServerState::of(&sample_store(), 10, 1);
        state.written_unix_ms -= 60_000;
        fs::write(&path, state.encode()).expect("write");
        assert!(load_store(&path, 8, 60_000, 100, 0).is_none(), "stale");
        assert!(load_store(&path, 8, 61_000, 100, 0).is_some(), "not stale");
    }
}
