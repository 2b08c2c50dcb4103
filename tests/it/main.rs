//! meshflow's integration tests, one module per area, built as one test binary.
//!
//! One binary, not one per file: each integration-test binary compiled `tests/support` again
//! and linked the whole library and its dependencies on its own, and with 22 of them the
//! build was most of CI's time. Run one area with `cargo test --profile ci --test it
//! routing_e2e::`, one test with its full path (`routing_e2e::weights_split_traffic`).

#[path = "../support/mod.rs"]
mod support;

mod agent_e2e;
mod apiserver_selftest;
mod bench_harness;
mod capture_e2e;
mod capture_rules;
mod conformance;
mod corpus;
mod crds;
mod envoy_e2e;
mod gateway_e2e;
mod gateway_tls_e2e;
mod golden;
mod incremental;
mod kube_source;
mod locality_e2e;
mod restart_e2e;
mod routing_e2e;
mod service_entry_e2e;
mod sotw_e2e;
mod stalled_client;
mod tools_e2e;
mod validate;
