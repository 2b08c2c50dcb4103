//! Envoy protobuf messages as JSON with Envoy's own field names (as Envoy's `/config_dump` and
//! bootstrap files write them), `Any` fields expanded with their `@type`: for
//! `/debug/config_dump`, the `meshflow xds` client and golden files.
//!
//! The descriptors are the file descriptor set that the `envoy-types` crate ships, embedded at
//! build time (see build.rs).

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

/// Every message type of envoy-types (Envoy's API, xDS, google.protobuf, ...).
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTOR_SET).expect("envoy-types' descriptor set decodes"))
}

/// One encoded message of the given full name (e.g. `envoy.config.cluster.v3.Cluster`) as JSON.
pub fn try_to_json(full_name: &str, bytes: &[u8]) -> Result<Value, String> {
    let descriptor = pool().get_message_by_name(full_name).ok_or_else(|| format!("no descriptor for {full_name}"))?;
    let message = DynamicMessage::decode(descriptor, bytes).map_err(|e| format!("decoding {full_name}: {e}"))?;
    let options = SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(false);
    let mut serializer = serde_json::Serializer::new(Vec::new());
    message.serialize_with_options(&mut serializer, &options).map_err(|e| format!("{full_name} as JSON: {e}"))?;
    serde_json::from_slice(&serializer.into_inner()).map_err(|e| format!("{full_name} as JSON: {e}"))
}

/// [`try_to_json`] for bytes known to be a valid message of a known type.
pub fn to_json(full_name: &str, bytes: &[u8]) -> Value {
    try_to_json(full_name, bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// A `type.googleapis.com/<full name>` URL's message as JSON, with its `@type` (as an `Any`
/// field prints).
pub fn any_to_json(type_url: &str, bytes: &[u8]) -> Result<Value, String> {
    let full_name = type_url.rsplit('/').next().unwrap_or(type_url);
    let mut value = try_to_json(full_name, bytes)?;
    if let Value::Object(map) = &mut value {
        map.insert("@type".into(), Value::String(type_url.to_string()));
        // `@type` first, as Envoy prints it.
        let rest = std::mem::take(map);
        map.insert("@type".into(), Value::String(type_url.to_string()));
        map.extend(rest.into_iter().filter(|(k, _)| k != "@type"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;

    #[test]
    fn cluster_json_has_envoy_field_names() {
        let c = Cluster {
            name: "outbound|80||a.default.svc.cluster.local".into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: 10, nanos: 0 }),
            ..Default::default()
        };
        let v = any_to_json("type.googleapis.com/envoy.config.cluster.v3.Cluster", &c.encode_to_vec()).unwrap();
        assert_eq!(v["@type"], "type.googleapis.com/envoy.config.cluster.v3.Cluster");
        assert_eq!(v["name"], "outbound|80||a.default.svc.cluster.local");
        assert_eq!(v["connect_timeout"], "10s");
        assert!(try_to_json("no.such.Type", &[]).is_err());
        assert!(try_to_json("envoy.config.cluster.v3.Cluster", &[0xff, 0xff]).is_err());
    }
}
