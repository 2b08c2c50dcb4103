//! The agent side: Envoy's bootstrap (and, later, running Envoy).

pub mod bootstrap;
