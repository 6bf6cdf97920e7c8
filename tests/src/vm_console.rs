//! The consoles of the test VMs `cargo xtask test` boots (`xtask/src/vm.rs`): what their scripts
//! printed between `==BEGIN name==` and `==END name==` lines, checked to be this run's.

use std::{collections::HashMap, path::PathBuf};

/// The sections of the console named by environment variable `var`. Panics (`NOT RUN`) when the
/// variable is unset or the console missing, and when the console is not this run's (its
/// `run-id` section must be `NVBIND_VM_RUN_ID`) or lacks section `required` (its script did
/// not run).
pub fn sections(var: &str, required: &str) -> HashMap<String, String> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "NOT RUN: {var} is not set: these tests read the console of the test VM that \
             `sudo cargo xtask test` boots (`cargo xtask vm` shows it)"
        )
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "NOT RUN: no VM console at {} ({e}): `cargo xtask test` boots the VM before the \
             integration tests",
            path.display()
        )
    });
    let text = text.replace('\r', "");
    let mut out = HashMap::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("==BEGIN ") {
        let after = &rest[at + 8..];
        let Some(name_end) = after.find("==\n") else {
            break;
        };
        let name = &after[..name_end];
        let body = &after[name_end + 3..];
        let end_marker = format!("==END {name}==");
        let Some(end) = body.find(&end_marker) else {
            break;
        };
        out.insert(name.to_string(), body[..end].trim().to_string());
        rest = &body[end + end_marker.len()..];
    }
    // The console must be this run's: `cargo xtask test` marks it with an id it also gives the
    // tests, so a console left by `cargo xtask vm` or an earlier run is never read as this one's.
    let run_id = std::env::var("NVBIND_VM_RUN_ID").expect(
        "NOT RUN: NVBIND_VM_RUN_ID is not set: these tests read the console of the test VM \
         that `sudo cargo xtask test` boots for the same run",
    );
    assert_eq!(
        out.get("run-id").map(String::as_str),
        Some(run_id.as_str()),
        "the console at {} is not this run's (run id {run_id})",
        path.display()
    );
    assert!(
        out.contains_key(required),
        "the VM's test script did not run; console {}:\n{}",
        path.display(),
        text.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    out
}
