//! `xds-peer`: the crates.io xDS server `nebucloud-xds` serving meshflow's benchmark resources.
//!
//! meshflow's issue 10 measures meshflow beside one peer xDS server from crates.io, with the
//! same load client and the same conformance suite. This binary is that peer: every response
//! it sends comes from `nebucloud-xds`'s own gRPC services (`XdsServer`, its delta and
//! state-of-the-world handlers) reading `nebucloud-xds`'s own snapshot cache (`ShardedCache`).
//! Our code only fills the cache:
//!
//! - `serve` builds the conformance suite's services (a state file in `--state DIR` that
//!   `control` edits, polled every 100 ms) into Clusters, ClusterLoadAssignments, a Listener and
//!   a RouteConfiguration shaped like meshflow's, adds the resources fetched once at start from a
//!   running meshflow (`--from`), and sets one snapshot per known node id (the crate looks
//!   snapshots up by the hash of the node id, with no fallback: a node without a snapshot gets
//!   nothing).
//! - `control` is the conformance suite's control adapter (verbs of meshflow's
//!   `src/xds/conformance.rs`): it rewrites the state file.

mod control;
mod fetch;
mod resources;
mod serve;

use std::process::ExitCode;

const USAGE: &str = "usage:
  xds-peer serve --addr 127.0.0.1:PORT --state DIR [--from MESHFLOW_ADDR] [--from-node-id ID]
                 [--node-id ID]... [--bench-nodes N]
  xds-peer control --state DIR VERB [ARGS]...
     verbs: reset | add-service NAME | remove-service NAME | set-endpoint NAME IP:PORT
            | change-cluster NAME | names NAME";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve::Options::parse(&args[1..]).and_then(serve::run),
        Some("control") => control::main(&args[1..]).map(|out| print!("{out}")),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("no command\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xds-peer: {e}");
            ExitCode::from(2)
        }
    }
}
