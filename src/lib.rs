//! meshflow: an Istio-compatible discovery service.
//!
//! Kubernetes and Istio objects come in from [`source`]s as [`model::InputEvent`]s, are
//! translated into Envoy resources by a differential-dataflow graph ([`engine`], built from
//! the pure builders in [`translate`]), land as one atomic batch per logical time in the
//! [`cache`], and are pushed to Envoy by the delta xDS server ([`xds`]). Start with
//! [`engine::Engine`] and [`translate::reference`]: the engine must always equal the reference.

pub mod admin;
pub mod agent;
pub mod bench;
pub mod cache;
pub mod capture;
pub mod engine;
pub mod json;
pub mod metrics;
pub mod model;
mod pb;
pub mod sched;
pub mod source;
pub mod translate;
pub mod validate;
pub mod verify;
pub mod xds;
