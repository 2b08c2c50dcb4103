//! SDS `Secret` resources from Kubernetes Secrets, as istiod's SDS server builds them
//! (`pilot/pkg/xds/sds.go` `toEnvoyTLSSecret`, `toEnvoyCaSecret`, and
//! `pilot/pkg/credentials/kube/secrets.go` `ExtractCertInfo`, `ExtractRoot`).
//!
//! A name ending in `-cacert` asks for the CA only (a `validation_context`); any other name for
//! the certificate and key (a `tls_certificate`). Errors name the Secret's keys, never its bytes.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use prost::Message;

use super::gateway::{SDS_CA_SUFFIX, SecretRef};
use crate::model::{FieldError, Secret};

/// The type URL of an SDS resource.
pub const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn inline(bytes: &[u8]) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    }
}

/// The keys of a Secret, for error messages: the first three and how many more (istiod's
/// `truncatedKeysMessage`).
fn keys(secret: &Secret) -> String {
    let keys: Vec<&str> = secret.data.keys().map(String::as_str).collect();
    if keys.len() < 3 { keys.join(", ") } else { format!("{}, and {} more...", keys[..3].join(", "), keys.len() - 3) }
}

fn non_empty<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret.get(key).filter(|v| !v.is_empty())
}

/// The encoded `envoy.extensions.transport_sockets.tls.v3.Secret` named `sds_name` from
/// `secret`:
/// - `<name>-cacert`: `validation_context` with `trusted_ca` from `cacert` (and `crl`), else
///   from `ca.crt` (and `ca.crl`);
/// - otherwise: `tls_certificate` from `cert`/`key`, else from `tls.crt`/`tls.key` (with
///   `tls.ocsp-staple`).
pub fn sds_secret(sds_name: &str, secret: &Secret) -> Result<Vec<u8>, FieldError> {
    let r#type = if sds_name.ends_with(SDS_CA_SUFFIX) {
        let (ca, crl) = if let Some(ca) = non_empty(secret, "cacert") {
            (ca, secret.get("crl"))
        } else if let Some(ca) = non_empty(secret, "ca.crt") {
            (ca, secret.get("ca.crl"))
        } else {
            let reason = if secret.data.contains_key("cacert") || secret.data.contains_key("ca.crt") {
                "the CA key (cacert or ca.crt) is empty".to_string()
            } else {
                format!("no CA: expected key cacert or ca.crt; found: {}", keys(secret))
            };
            return Err(FieldError::new("data", reason));
        };
        tls::secret::Type::ValidationContext(tls::CertificateValidationContext {
            trusted_ca: Some(inline(ca)),
            crl: crl.map(inline),
            ..Default::default()
        })
    } else {
        let cert = if let (Some(c), Some(k)) = (non_empty(secret, "cert"), non_empty(secret, "key")) {
            tls::TlsCertificate {
                certificate_chain: Some(inline(c)),
                private_key: Some(inline(k)),
                ..Default::default()
            }
        } else if let (Some(c), Some(k)) = (non_empty(secret, "tls.crt"), non_empty(secret, "tls.key")) {
            tls::TlsCertificate {
                certificate_chain: Some(inline(c)),
                private_key: Some(inline(k)),
                ocsp_staple: secret.get("tls.ocsp-staple").map(inline),
                ..Default::default()
            }
        } else {
            let has = |a: &str, b: &str| secret.data.contains_key(a) && secret.data.contains_key(b);
            let reason = if has("cert", "key") {
                "found keys cert and key, but they were empty".to_string()
            } else if has("tls.crt", "tls.key") {
                "found keys tls.crt and tls.key, but they were empty".to_string()
            } else {
                format!("expected keys (cert and key) or (tls.crt and tls.key); found: {}", keys(secret))
            };
            return Err(FieldError::new("data", reason));
        };
        tls::secret::Type::TlsCertificate(cert)
    };
    Ok(tls::Secret { name: sds_name.to_string(), r#type: Some(r#type) }.encode_to_vec())
}

/// The SDS resource a gateway's [`SecretRef`] stands for, read from the Secrets `get` finds by
/// (namespace, name): a CA from `<name>-cacert`, else from `<name>` (istiod's `GetCaCert`).
/// None while no such Secret exists (istiod then sends nothing and Envoy keeps waiting);
/// `Some(Err)` for a Secret without the expected keys.
pub fn sds_for_ref<'a>(
    r: &SecretRef,
    get: impl Fn(&str, &str) -> Option<&'a Secret>,
) -> Option<Result<Vec<u8>, FieldError>> {
    let secret = get(&r.namespace, &r.name).or_else(|| r.ca_fallback().and_then(|n| get(&r.namespace, n)))?;
    Some(sds_secret(&r.sds_name, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::secret::{SecretBytes, secret_from_value};
    use serde_json::json;

    fn secret(t: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            namespace: "istio-system".into(),
            name: "gw".into(),
            r#type: t.into(),
            data: data.iter().map(|(k, v)| (k.to_string(), SecretBytes(v.as_bytes().to_vec()))).collect(),
        }
    }

    fn decode(bytes: &[u8]) -> tls::Secret {
        tls::Secret::decode(bytes).unwrap()
    }

    fn inline_bytes(d: &Option<core::DataSource>) -> &[u8] {
        match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(core::data_source::Specifier::InlineBytes(b)) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tls_secret_becomes_a_tls_certificate_with_inline_bytes() {
        let s = secret("kubernetes.io/tls", &[("tls.crt", "CRT"), ("tls.key", "KEY"), ("ca.crt", "CA")]);
        let out = decode(&sds_secret("kubernetes://gw", &s).unwrap());
        assert_eq!(out.name, "kubernetes://gw");
        let Some(tls::secret::Type::TlsCertificate(c)) = out.r#type else { panic!() };
        assert_eq!(inline_bytes(&c.certificate_chain), b"CRT");
        assert_eq!(inline_bytes(&c.private_key), b"KEY");
        assert!(c.ocsp_staple.is_none());
    }

    #[test]
    fn generic_keys_win_over_tls_keys_as_in_istiod() {
        let s = secret("Opaque", &[("cert", "C"), ("key", "K"), ("tls.crt", "T"), ("tls.key", "TK")]);
        let Some(tls::secret::Type::TlsCertificate(c)) = decode(&sds_secret("kubernetes://gw", &s).unwrap()).r#type
        else {
            panic!()
        };
        assert_eq!(inline_bytes(&c.certificate_chain), b"C");
    }

    #[test]
    fn a_cacert_name_becomes_a_validation_context_from_cacert_or_ca_crt() {
        let s =
            secret("kubernetes.io/tls", &[("tls.crt", "CRT"), ("tls.key", "KEY"), ("ca.crt", "CA"), ("ca.crl", "RL")]);
        let out = decode(&sds_secret("kubernetes://gw-cacert", &s).unwrap());
        assert_eq!(out.name, "kubernetes://gw-cacert");
        let Some(tls::secret::Type::ValidationContext(v)) = out.r#type else { panic!() };
        assert_eq!(inline_bytes(&v.trusted_ca), b"CA");
        assert_eq!(inline_bytes(&v.crl), b"RL");
        let generic = secret("Opaque", &[("cacert", "GCA")]);
        let Some(tls::secret::Type::ValidationContext(v)) =
            decode(&sds_secret("kubernetes://gw-cacert", &generic).unwrap()).r#type
        else {
            panic!()
        };
        assert_eq!(inline_bytes(&v.trusted_ca), b"GCA");
        assert!(v.crl.is_none());
    }

    #[test]
    fn a_ca_reference_falls_back_to_the_secret_without_the_suffix() {
        let s = secret("kubernetes.io/tls", &[("tls.crt", "CRT"), ("tls.key", "KEY"), ("ca.crt", "CA")]);
        let get = |ns: &str, name: &str| (ns == "istio-system" && name == "gw").then_some(&s);
        let ca = SecretRef::of_credential("gw-cacert", "istio-system", true).unwrap();
        let out = decode(&sds_for_ref(&ca, get).unwrap().unwrap());
        assert_eq!(out.name, "kubernetes://gw-cacert");
        assert!(matches!(out.r#type, Some(tls::secret::Type::ValidationContext(_))));
        let cert = SecretRef::of_credential("gw", "istio-system", false).unwrap();
        assert!(matches!(
            decode(&sds_for_ref(&cert, get).unwrap().unwrap()).r#type,
            Some(tls::secret::Type::TlsCertificate(_))
        ));
        let elsewhere = SecretRef::of_credential("kubernetes://shop/gw", "istio-system", false).unwrap();
        assert_eq!((elsewhere.namespace.as_str(), elsewhere.name.as_str()), ("shop", "gw"));
        assert!(sds_for_ref(&elsewhere, get).is_none(), "no such Secret: nothing to send");
    }

    #[test]
    fn missing_or_empty_keys_are_errors_that_name_keys_not_bytes() {
        let s = secret("Opaque", &[("a", "SECRET1"), ("b", "SECRET2"), ("c", "x"), ("d", "y")]);
        let e = sds_secret("kubernetes://gw", &s).unwrap_err();
        assert_eq!(e.field, "data");
        assert!(e.reason.contains("found: a, b, c, and 1 more..."), "{e}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let e = sds_secret("kubernetes://gw-cacert", &s).unwrap_err();
        assert!(e.reason.contains("cacert or ca.crt"), "{e}");
        let empty = secret_from_value("ns", "s", &json!({"stringData": {"cert": "", "key": ""}})).unwrap().unwrap();
        assert!(sds_secret("kubernetes://s", &empty).unwrap_err().reason.contains("but they were empty"));
    }
}
