//! Kubernetes Secrets that hold gateway certificates (`kubernetes.io/tls` and `Opaque`).
//!
//! The bytes of a Secret never appear in `Debug` or `Display` output, nor in validation errors:
//! only the Secret's name, type and the names and sizes of its keys do.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::FieldError;

/// `type: kubernetes.io/tls`: `tls.crt`, `tls.key`, optional `ca.crt`.
pub const TLS_TYPE: &str = "kubernetes.io/tls";
/// `type: Opaque` (also the default): `cert`/`key`/`cacert`, or the `tls.*` keys.
pub const OPAQUE_TYPE: &str = "Opaque";

/// Secret bytes: compared, hashed and serialized as they are, printed as their length only.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// A core/v1 Secret of type `kubernetes.io/tls` or `Opaque`, reduced to its data.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Secret {
    pub namespace: String,
    pub name: String,
    pub r#type: String,
    /// `data` (decoded from base64) merged with `stringData`, which wins, as the apiserver does.
    pub data: BTreeMap<String, SecretBytes>,
}

impl Secret {
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key).map(|b| b.0.as_slice())
    }

    /// Whether meshflow reads Secrets of this type (`kubernetes.io/tls`, `Opaque`).
    pub fn is_served_type(t: &str) -> bool {
        t == TLS_TYPE || t == OPAQUE_TYPE
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("type", &self.r#type)
            .field("data", &self.data)
            .finish()
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.data.keys().map(String::as_str).collect();
        write!(f, "Secret {}/{} ({}, keys {keys:?})", self.namespace, self.name, self.r#type)
    }
}

/// Decodes base64 as the apiserver writes `data` (standard alphabet, padded; unpadded and
/// line breaks accepted).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    super::decode_base64(&s, false)
}

/// A Secret from its manifest (`type`, `data` in base64, `stringData`). Errors name the field
/// and never quote a value. `Ok(None)`: a Secret of a type meshflow does not read.
pub fn secret_from_value(namespace: &str, name: &str, doc: &Value) -> Result<Option<Secret>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let r#type = match doc.get("type") {
        None | Some(Value::Null) => OPAQUE_TYPE.to_string(),
        Some(Value::String(t)) if t.is_empty() => OPAQUE_TYPE.to_string(),
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(vec![FieldError::new("type", "must be a string")]),
    };
    if !Secret::is_served_type(&r#type) {
        return Ok(None);
    }
    let mut data = BTreeMap::new();
    match doc.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                match value.as_str().map(decode_base64) {
                    Some(Some(bytes)) => {
                        data.insert(key.clone(), SecretBytes(bytes));
                    }
                    Some(None) => errors.push(FieldError::new(format!("data.{key}"), "not valid base64")),
                    None => errors.push(FieldError::new(format!("data.{key}"), "must be a base64 string")),
                }
            }
        }
        Some(_) => errors.push(FieldError::new("data", "must be a mapping of key to base64 string")),
    }
    match doc.get("stringData") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                match value.as_str() {
                    Some(s) => {
                        data.insert(key.clone(), SecretBytes(s.as_bytes().to_vec()));
                    }
                    None => errors.push(FieldError::new(format!("stringData.{key}"), "must be a string")),
                }
            }
        }
        Some(_) => errors.push(FieldError::new("stringData", "must be a mapping of key to string")),
    }
    for key in data.keys() {
        let valid = !key.is_empty()
            && key.len() <= 253
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            errors.push(FieldError::new(
                format!("data.{key}"),
                "a key must consist of alphanumerics, '-', '_' or '.' (at most 253 characters)",
            ));
        }
    }
    let secret = Secret { namespace: namespace.to_string(), name: name.to_string(), r#type, data };
    // A key whose value is rejected above is there, just wrong: not also reported missing.
    let present = |key: &str| errors.iter().any(|e| e.field == format!("data.{key}"));
    let missing: Vec<FieldError> =
        validate(&secret).into_iter().filter(|e| !present(e.field.strip_prefix("data.").unwrap_or(&e.field))).collect();
    errors.extend(missing);
    if errors.is_empty() { Ok(Some(secret)) } else { Err(errors) }
}

/// A Secret as the Kubernetes watcher delivers it (`data` already decoded).
pub fn secret_from(
    namespace: &str,
    name: &str,
    secret: &k8s_openapi::api::core::v1::Secret,
) -> Result<Option<Secret>, Vec<FieldError>> {
    let r#type = secret.type_.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| OPAQUE_TYPE.to_string());
    if !Secret::is_served_type(&r#type) {
        return Ok(None);
    }
    let mut data: BTreeMap<String, SecretBytes> = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        data.insert(k.clone(), SecretBytes(v.0.clone()));
    }
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), SecretBytes(v.as_bytes().to_vec()));
    }
    let secret = Secret { namespace: namespace.to_string(), name: name.to_string(), r#type, data };
    let errors = validate(&secret);
    if errors.is_empty() { Ok(Some(secret)) } else { Err(errors) }
}

/// The apiserver's rule for `kubernetes.io/tls`: both `tls.crt` and `tls.key` present.
fn validate(secret: &Secret) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if secret.r#type == TLS_TYPE {
        for key in ["tls.crt", "tls.key"] {
            if !secret.data.contains_key(key) {
                errors.push(FieldError::new(format!("data.{key}"), "required for a Secret of type kubernetes.io/tls"));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_is_decoded_and_string_data_wins_and_nothing_prints_the_bytes() {
        let doc = json!({"type": "kubernetes.io/tls",
            "data": {"tls.crt": "Q0VSVC1CWVRFUw==", "tls.key": "S0VZLUJZVEVT"},
            "stringData": {"tls.key": "SECRET-KEY-TEXT"}});
        let s = secret_from_value("istio-system", "gw-cert", &doc).unwrap().unwrap();
        assert_eq!(s.get("tls.crt"), Some(&b"CERT-BYTES"[..]));
        assert_eq!(s.get("tls.key"), Some(&b"SECRET-KEY-TEXT"[..]), "stringData overrides data");
        for text in [format!("{s:?}"), s.to_string()] {
            assert!(!text.contains("CERT-BYTES") && !text.contains("SECRET-KEY"), "{text}");
            assert!(text.contains("gw-cert") && text.contains("tls.crt"), "{text}");
        }
        assert!(format!("{s:?}").contains("<15 bytes>"));
    }

    #[test]
    fn bad_base64_and_missing_tls_keys_name_the_field_without_the_value() {
        let doc = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "not*base64!!"}});
        let errors = secret_from_value("ns", "s", &doc).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["data.tls.crt", "data.tls.key"]);
        assert!(errors.iter().all(|e| !e.to_string().contains("not*base64")), "{errors:?}");
    }

    #[test]
    fn opaque_is_the_default_type_and_other_types_are_not_read() {
        let s = secret_from_value("ns", "s", &json!({"stringData": {"cert": "c", "key": "k"}})).unwrap().unwrap();
        assert_eq!(s.r#type, OPAQUE_TYPE);
        let token = json!({"type": "kubernetes.io/service-account-token", "data": {"token": "dA=="}});
        assert_eq!(secret_from_value("ns", "s", &token).unwrap(), None);
    }
}
