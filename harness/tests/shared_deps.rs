//! The harness and the node executable it builds (`clusterlab-node`, holding agent, hostsgen,
//! sshkeys and proxy; a second cargo invocation, same profile and target dir) must see every dependency they share with the same features; otherwise cargo
//! compiles that dependency, and everything above it, a second time on a first run. Cargo
//! unifies features per invocation, so `shared-deps/Cargo.toml` lists the union; this test
//! fails, naming the crate, when a change makes the two sides differ again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

/// For each `name version` in the dependency graph of `packages`, the feature sets it is
/// built with (one for the target, one for the host when both use it).
fn features(packages: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace).args([
        "tree",
        "--offline",
        "--locked",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "-f",
        "{p}|{f}",
    ]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {} failed: {}",
        packages.join(" -p "),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((package, feats)) = line.split_once('|') else {
            continue;
        };
        // "name v1.2.3 (/path) (proc-macro)": keep name and version.
        let id: Vec<&str> = package.split_whitespace().take(2).collect();
        let feats = feats.trim_end_matches("(*)").trim().to_string();
        map.entry(id.join(" ")).or_default().insert(feats);
    }
    map
}

#[test]
fn harness_and_node_binaries_share_every_common_dependency() {
    let harness = features(&["harness"]);
    let node = features(&[harness::images::NODE_EXE]);
    assert!(
        harness.len() > 50 && node.len() > 50,
        "cargo tree listed too little: {} and {} packages",
        harness.len(),
        node.len()
    );
    let common: Vec<&String> = harness.keys().filter(|k| node.contains_key(*k)).collect();
    assert!(common.iter().any(|k| k.starts_with("tokio ")), "{common:?}");
    let differ: Vec<String> = common
        .iter()
        .filter(|k| harness[**k] != node[**k])
        .map(|k| {
            format!(
                "{k}: the harness builds it with features {:?}, the node binaries with {:?}",
                harness[*k], node[*k]
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "dependencies the node binaries would compile a second time (add the union of the \
         features to shared-deps/Cargo.toml; [build-dependencies] for what proc macros and \
         build scripts use):\n{}",
        differ.join("\n")
    );
}
