//! pnsd: a dense long-polling push server.
//!
//! The data path, in the order a request meets it:
//! - `server`: start-up (limits, sockets, threads, signals) and the drain;
//! - `reactor`: one mio event loop per core; only dispatches: accepts, readiness to `conn`,
//!   wake-ups to `parked`, wheel ticks (expiries in bounded slices); takes its clock;
//! - `sockio`: the one socket I/O layer (bounded read, writes with back-pressure, vectored
//!   writes, accept with EMFILE back-off), generic over TCP, Unix and test sockets;
//! - `conn`: one HTTP connection's state machine (private state, one entry point per event,
//!   each returning the reactor's next step), generic over its transport; every response it
//!   starts is reported to the reactor's `observer` (metrics tally, access log record);
//! - `http`: request head parsing (httparse), no I/O; `query`: the poll's parameters;
//! - `poll`: the endpoints: answer at once or park; `answer`: a poll's answer bytes (flat, or
//!   by reference to the stored messages); `response`: HTTP heads and errors;
//! - `sse`: the bytes of a Server-Sent Events stream (head, message events, reset, heartbeat);
//! - `parked`: parked subscribers and their answers (publish wake-up, hold or token expiry,
//!   drain), the encode-once cache; owns the reactor's `waiters` index;
//! - `token`: HS256 subscriber tokens; `session`: the sessions the application registers (a
//!   `sid` that is not a token), their channels and kept position;
//! - `waiters`: which parked polls wait on which channel (per reactor);
//! - `wheel`: the hashed timer wheel of hold, token, head, idle and write deadlines;
//! - `store`, `cursor`: channel buffers, the global message order and cursors;
//! - `publish`: the Unix publish socket's thread (socket I/O only); `line`: its NDJSON line
//!   protocol (framing, parsing, answer lines), no I/O;
//! - `ingest`: the one way into the store: appends in short lock holds and wakes the reactors;
//! - `stats`: the stats figures, gathered from the reactors without blocking, and rendered;
//! - `state`: the server's state as one versioned image (the store today), the `--state-file`
//!   written by the drain and read at start;
//! - `upgrade`: hands the running server to a new binary (a child inheriting the descriptors
//!   and a state memfd), or serves on unchanged when that fails;
//! - `systemd`: socket activation (inherited listeners) and sd_notify state messages;
//! - `stats`: the stats line's figures, gathered from the reactors without blocking, and
//!   rendered; `metrics`: the same figures and more for Prometheus (`/metrics`, its own thread
//!   and listener), read from atomics only; `access_log`: one line per answered request,
//!   buffered per reactor;
//! - `fleet`: fleet mode's Redis side (the log, the epoch, the publisher client, the feed thread);
//!   `fleet_sink`: the feed's writer of the store (through `ingest`); `fleet_publish`: the
//!   publish thread's route to Redis (ack after the store holds the entry);
//! - `backoff`: accept back-off on EMFILE; `hub`: what the threads share (store, counters,
//!   per-reactor gauges, clock); `pool`: read buffers; `cli`, `client`, `config`.

pub mod access_log;
pub mod answer;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod conn;
pub mod cursor;
pub mod fleet;
pub mod fleet_publish;
pub mod fleet_sink;
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
