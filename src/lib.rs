//! pnsd: a dense long-polling push server.
//!
//! The data path, in the order a request meets it (each room, one concern):
//! - `server`: start-up (limits, sockets, threads, signals) and the drain (`server::carried`:
//!   the start of an upgraded process); `systemd`: socket activation and sd_notify;
//! - `reactor`: one mio event loop per core; only dispatches: accepts, readiness to `conn`,
//!   wake-ups to `parked`, wheel ticks (expiries in bounded slices); takes its clock
//!   (`reactor::admit`: accepting, the connection limit and its 503 refusals;
//!   `reactor::handover`: freezing and adopting connections across an upgrade);
//! - `sockio`: the one socket I/O layer (bounded read, writes with back-pressure, vectored
//!   writes, accept with EMFILE back-off, refused sockets lingering), for HTTP connections and
//!   publishers alike; `backoff`: the accept pause; `pool`: the per-reactor read buffers;
//! - `conn`: one HTTP connection's state machine (private state, one entry point per event,
//!   each returning the reactor's next step), generic over its transport (`conn::stream`: an
//!   event stream's side; `conn::image`: a connection as carried by an upgrade);
//! - `http`: request head parsing (httparse), no I/O; `query`: the poll's parameters;
//!   `token`: HS256 subscriber tokens; `session`: the sessions the application registers;
//! - `poll`: the endpoints: answer at once or park;
//! - `answer`: a poll's answer bytes (flat, or by reference to the stored messages);
//!   `sse`: the bytes of a Server-Sent Events stream; `response`: HTTP heads and errors;
//! - `observer`: every response started is reported to the metrics tally and the access log
//!   (`access_log`: one line per answered request, buffered per reactor);
//! - `parked`: parked subscribers and their answers (publish wake-up, hold or token expiry,
//!   drain), the encode-once cache; `waiters`: which parked polls wait on which channel;
//!   `wheel`: the hashed timer wheel of hold, token, head, idle and write deadlines;
//! - `store`, `cursor`: channel buffers, the global message order and cursors;
//!
//! and the way in, in the order a publish meets it:
//! - `publish`: the Unix publish socket's thread (socket I/O only; `publish::fleet`: fleet
//!   mode's route of publish lines to Redis); `line`: its NDJSON line protocol, no I/O;
//! - `ingest`: the one way into the store: appends in short lock holds and wakes the reactors
//!   (`ingest::fleet`: the Redis feed as a source); `fleet`: fleet mode's Redis side (the log,
//!   the epoch, the publisher client, the feed thread);
//! - `hub`: what the threads share (store, counters, clock, the reactors' links); `command`:
//!   what a reactor is told, and what it answers (the stats reply, its image when frozen);
//!   `gauges`: each reactor's figures and tally, readable from any thread;
//! - `stats`: the stats line's figures, gathered without blocking, and rendered; `metrics`: the
//!   same and more for Prometheus (`/metrics`, its own thread and listener);
//! - `state`: the server's state as one versioned image, the `--state-file`; `upgrade`: hands
//!   the running server to a new binary, or serves on unchanged when that fails;
//! - `cli`, `client`, `config`, `xorshift`: the command line, the publish client, the options,
//!   a small random source.

pub mod access_log;
pub mod answer;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod command;
pub mod config;
pub mod conn;
pub mod cursor;
pub mod fleet;
pub mod gauges;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod line;
pub mod metrics;
pub mod observer;
pub mod parked;
pub mod poll;
pub mod pool;
pub mod publish;
pub mod query;
pub mod reactor;
pub mod response;
pub mod server;
pub mod session;
pub mod sockio;
pub mod sse;
pub mod state;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod token;
pub mod upgrade;
pub mod waiters;
pub mod wheel;
pub mod xorshift;
