//! Envoy resources as JSON, with Envoy's own field names (as `/config_dump` and bootstrap
//! files write them), for golden files a person can review and for bootstraps that a real
//! Envoy validates: the library's [`meshflow::json`].

#[allow(unused_imports)]
pub use meshflow::json::{pool, to_json};
