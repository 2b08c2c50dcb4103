//! Finds the protobuf descriptor set that the `envoy-types` crate ships
//! (`src/generated/types.bin`) at the version Cargo.lock pins, and copies it to OUT_DIR for
//! `src/json.rs`: Envoy resources as JSON with Envoy's field names (config_dump, `meshflow xds`).
//! envoy-types does not export it, so it is found in cargo's registry (or a vendor directory).

use std::path::{Path, PathBuf};

fn envoy_types_version(manifest_dir: &Path) -> Option<String> {
    let lock = std::fs::read_to_string(manifest_dir.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"envoy-types\"" {
            let version = lines.next()?;
            return Some(version.trim_start_matches("version = ").trim_matches('"').to_string());
        }
    }
    None
}

fn candidates(version: &str, manifest_dir: &Path) -> Vec<PathBuf> {
    let dir = format!("envoy-types-{version}");
    let mut out = vec![manifest_dir.join("vendor").join(&dir)];
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    if let Some(home) = cargo_home
        && let Ok(indexes) = std::fs::read_dir(home.join("registry/src"))
    {
        out.extend(indexes.flatten().map(|i| i.path().join(&dir)));
    }
    out.into_iter().map(|d| d.join("src/generated/types.bin")).collect()
}

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("envoy_types.bin");
    let version = envoy_types_version(&manifest_dir).expect("envoy-types is in Cargo.lock");
    let found = candidates(&version, &manifest_dir).into_iter().find(|p| p.is_file());
    let Some(path) = found else {
        panic!("envoy-types {version}'s src/generated/types.bin not found in cargo's registry or vendor/");
    };
    std::fs::copy(&path, &out).expect("copy the envoy-types descriptor set");
}
