//! Envoy resources as JSON, with Envoy's own field names (as `/config_dump` and bootstrap
//! files write them), for golden files a person can review and for bootstraps that a real
//! Envoy validates.
//!
//! The descriptors come from the file descriptor set that the `envoy-types` crate ships
//! (`src/generated/types.bin`), found in cargo's registry at the version Cargo.lock pins.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

/// The envoy-types version in Cargo.lock.
fn envoy_types_version() -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).expect("read Cargo.lock");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"envoy-types\"" {
            let version = lines.next().expect("version line after name");
            return version.trim_start_matches("version = ").trim_matches('"').to_string();
        }
    }
    panic!("envoy-types is not in Cargo.lock");
}

fn descriptor_set_path() -> PathBuf {
    let version = envoy_types_version();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = cargo_home.join("registry/src");
    for index in std::fs::read_dir(&registry).unwrap_or_else(|e| panic!("list {}: {e}", registry.display())) {
        let candidate = index.expect("dir entry").path().join(format!("envoy-types-{version}/src/generated/types.bin"));
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("envoy-types {version}'s src/generated/types.bin not found under {}", registry.display());
}

pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let path = descriptor_set_path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        DescriptorPool::decode(bytes.as_slice()).expect("envoy-types descriptor set decodes")
    })
}

/// One encoded message of the given full name (e.g. `envoy.config.cluster.v3.Cluster`) as JSON,
/// `Any` fields expanded with their `@type`, field names as in Envoy's config files.
pub fn to_json(full_name: &str, bytes: &[u8]) -> Value {
    let descriptor = pool().get_message_by_name(full_name).unwrap_or_else(|| panic!("no descriptor for {full_name}"));
    let message = DynamicMessage::decode(descriptor, bytes).unwrap_or_else(|e| panic!("decode {full_name}: {e}"));
    let options = SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(false);
    let mut serializer = serde_json::Serializer::new(Vec::new());
    message.serialize_with_options(&mut serializer, &options).expect("serialize to JSON");
    serde_json::from_slice(&serializer.into_inner()).expect("JSON")
}
