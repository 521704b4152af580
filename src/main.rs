//! The `pnsd` binary: see `pnsd::cli`.

fn main() {
    std::process::exit(pnsd::cli::main());
}
