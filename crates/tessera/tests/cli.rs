//! The CLI's contract: help for every subcommand, and checked-in OpenAPI
//! documents that match the code.

use std::path::PathBuf;
use std::process::Command;

fn tessera(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .unwrap()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["up", "--help"],
        vec!["serve", "--help"],
        vec!["admin", "--help"],
        vec!["admin", "create-user", "--help"],
        vec!["admin", "rotate-keys", "--help"],
        vec!["openapi", "--help"],
        vec!["events", "--help"],
        vec!["events", "tail", "--help"],
        vec!["events", "lag", "--help"],
        vec!["events", "dlq", "--help"],
        vec!["events", "dlq", "list", "--help"],
        vec!["events", "dlq", "replay", "--help"],
        vec!["events", "dlq", "drop", "--help"],
    ] {
        let output = tessera(&args);
        assert!(output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn unknown_role_is_a_clear_error() {
    let output = tessera(&["openapi", "nosuch"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("roles are: gateway, identity"));
    let output = tessera(&["openapi", "gateway"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no API of its own"));
}

/// Set `TESSERA_UPDATE_OPENAPI=1` to rewrite the checked-in documents after
/// a reviewed API change.
#[test]
fn checked_in_openapi_documents_match_the_code() {
    let documented: Vec<String> = std::fs::read_dir(repo_root().join("openapi"))
        .unwrap()
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_owned))
        .collect();
    assert!(
        documented.contains(&"identity".to_owned()),
        "{documented:?}"
    );
    for role in &documented {
        let output = tessera(&["openapi", role]);
        assert!(output.status.success());
        let generated = String::from_utf8(output.stdout).unwrap();
        let path = repo_root().join(format!("openapi/{role}.json"));
        if std::env::var("TESSERA_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            generated == checked_in,
            "{} differs from `tessera openapi {role}`: review the API change and rerun with TESSERA_UPDATE_OPENAPI=1",
            path.display()
        );
        let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
