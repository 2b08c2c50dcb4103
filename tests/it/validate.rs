//! `meshflow validate` as a user runs it: the real binary on the shared corpus
//! (`../shared/corpus`, as in tests/corpus.rs) and on small directories of its files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");

struct Run {
    code: Option<i32>,
    stdout: String,
}

fn validate(paths: &[&Path]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_meshflow"))
        .arg("validate")
        .args(paths)
        .env("RUST_LOG", "off")
        .output()
        .expect("running meshflow validate");
    Run { code: out.status.code(), stdout: String::from_utf8(out.stdout).expect("utf-8 output") }
}

fn corpus() -> PathBuf {
    let dir = PathBuf::from(CORPUS);
    assert!(dir.is_dir(), "the shared corpus is expected at {CORPUS} (../shared/corpus next to this crate)");
    dir
}

/// The file part of a `<file>:<document> ...` problem line.
fn file_of(line: &str) -> &str {
    line.split_once(' ').map(|(loc, _)| loc).and_then(|loc| loc.rsplit_once(':')).map(|(f, _)| f).unwrap_or(line)
}

#[test]
fn the_corpus_fails_and_exactly_its_invalid_files_are_named() {
    let dir = corpus();
    let run = validate(&[&dir]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let summary = lines.last().expect("a summary line");
    let problems: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("warning: ") && !l.starts_with("skipped ") && *l != *summary)
        .collect();
    let named: BTreeSet<String> = problems
        .iter()
        .map(|l| Path::new(file_of(l)).file_name().and_then(|n| n.to_str()).unwrap_or(l).to_string())
        .collect();
    let mut invalid: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with("invalid-") && name.ends_with(".yaml") {
            invalid.insert(name);
        }
    }
    assert!(invalid.len() >= 3, "{invalid:?}");
    assert_eq!(named, invalid, "problem lines:\n{}", problems.join("\n"));
    // Each invalid file holds one rejected document.
    assert!(summary.contains(&format!(", {} invalid, ", invalid.len())), "{summary}");
    // The unknown top-level field, named as the config-dir source names it.
    let junk = dir.join("invalid-dr-unknown-top-level-field.yaml");
    assert!(
        problems.contains(
            &format!("{}:0 DestinationRule default/productpage unexpected_junk: unknown field", junk.display())
                .as_str()
        ),
        "{}",
        problems.join("\n")
    );
    // Deployments, ServiceAccounts, ... are counted in one line.
    let skipped: Vec<&&str> = lines.iter().filter(|l| l.starts_with("skipped ")).collect();
    assert_eq!(skipped.len(), 1, "{}", run.stdout);
    assert!(skipped[0].contains("apps/v1 Deployment ("), "{}", skipped[0]);
}

#[test]
fn a_directory_of_valid_files_passes() {
    let dir = corpus();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["bookinfo.yaml", "bookinfo-destination-rule-all.yaml", "bookinfo-virtual-service-all-v1.yaml"] {
        std::fs::copy(dir.join(name), tmp.path().join(name)).unwrap();
    }
    let run = validate(&[tmp.path()]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let summary = run.stdout.lines().last().unwrap();
    assert!(summary.ends_with(" objects checked, 0 invalid, 0 warnings"), "{}", run.stdout);
}

#[test]
fn the_details_fault_file_warns_of_its_unreachable_rule() {
    let file = corpus().join("bookinfo-fault-injection-details-v1.yaml");
    let run = validate(&[&file]);
    assert_eq!(run.code, Some(0), "a warning does not fail: {}", run.stdout);
    let expected = format!(
        "warning: {}:0 VirtualService default/details spec.http[1]: virtualService rule #1 not used \
         (only the last rule can have no matches) [VirtualServiceUnreachableRule]",
        file.display()
    );
    assert!(run.stdout.lines().any(|l| l == expected), "missing {expected:?} in:\n{}", run.stdout);
}

#[test]
fn a_destination_host_that_matches_nothing_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  ports: [{name: http, port: 9080}]\n\
        ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n\
        spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviewz}\n";
    let file = tmp.path().join("vs.yaml");
    std::fs::write(&file, text).unwrap();
    let run = validate(&[&file]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let expected = format!(
        "warning: {}:1 VirtualService default/reviews spec.http[0].route[0].destination.host: \
         Referenced host not found: \"reviewz\" [ReferencedResourceNotFound]",
        file.display()
    );
    assert_eq!(run.stdout.lines().collect::<Vec<_>>(), [expected.as_str(), "2 objects checked, 0 invalid, 1 warnings"]);
}
