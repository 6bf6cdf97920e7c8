//! cgroup v1: the `devices` controller's `devices.deny` / `devices.allow` files.
//!
//! The kernel takes one rule per write. A first binding writes `a` to `devices.deny` (deny
//! everything, drop every exception) and then each allowed device; a replacement first denies
//! what the new list drops and then allows what it adds, so the cgroup never holds more than the
//! old policy's rules plus the new one's, and never goes back to "allow all".

use std::{fs, io::Write, path::Path};

use super::{cgroup::Cgroup, rules::DeviceRule, BindError};

/// `devices.list` of a cgroup no one has restricted.
pub const ALLOW_ALL: &str = "a *:* rwm";

pub fn read_list(cgroup: &Cgroup) -> Result<String, BindError> {
    let path = cgroup.file("devices.list");
    fs::read_to_string(&path).map_err(|e| BindError::io(&path, e))
}

pub fn is_unrestricted(list: &str) -> bool {
    let lines: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty()).collect();
    lines == [ALLOW_ALL]
}

fn write_rule(cgroup: &Cgroup, file: &str, line: &str) -> Result<(), BindError> {
    let path = cgroup.file(file);
    // One write per rule: the kernel parses each write as one rule.
    let result = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    result.map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) => " (a parent cgroup does not allow this device)",
            Some(libc::EINVAL) if line == "a" => " (a cgroup with child cgroups cannot be reset)",
            _ => "",
        };
        BindError::Kernel(format!(
            "cannot write '{line}' to {}: {e}{hint}",
            path.display()
        ))
    })
}

/// What the cgroup holds before a binding is applied.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// Nothing: `a *:* rwm`.
    Unrestricted,
    /// Exactly these rules (nvbind's previous binding).
    Exactly(&'a [DeviceRule]),
    /// Something in between: an agent was killed while replacing these rules. Start over.
    Interrupted(&'a [DeviceRule]),
}

/// Applies `new` over what the cgroup holds. On failure, puts the previous policy back before
/// returning the error.
pub fn apply(cgroup: &Cgroup, start: Start<'_>, new: &[DeviceRule]) -> Result<(), BindError> {
    let result = match start {
        Start::Unrestricted | Start::Interrupted(_) => {
            write_rule(cgroup, "devices.deny", "a").and_then(|()| allow_all_of(cgroup, new.iter()))
        }
        Start::Exactly(old) => {
            let mut dropped = old.iter().filter(|o| !new.iter().any(|n| n.same_grant(o)));
            let added = new.iter().filter(|n| !old.iter().any(|o| o.same_grant(n)));
            dropped
                .try_for_each(|r| write_rule(cgroup, "devices.deny", &r.v1_line()))
                .and_then(|()| allow_all_of(cgroup, added))
        }
    };
    if let Err(error) = result {
        let restored = match start {
            Start::Unrestricted => write_rule(cgroup, "devices.allow", "a"),
            Start::Exactly(old) | Start::Interrupted(old) => {
                write_rule(cgroup, "devices.deny", "a")
                    .and_then(|()| allow_all_of(cgroup, old.iter()))
            }
        };
        return Err(match restored {
            Ok(()) => error,
            Err(also) => BindError::Kernel(format!(
                "{error}; and restoring the previous policy failed too: {also}"
            )),
        });
    }
    Ok(())
}

fn allow_all_of<'a>(
    cgroup: &Cgroup,
    rules: impl Iterator<Item = &'a DeviceRule>,
) -> Result<(), BindError> {
    for rule in rules {
        write_rule(cgroup, "devices.allow", &rule.v1_line())?;
    }
    Ok(())
}

/// Lifts the restriction: the cgroup is unrestricted again (as far as its parent allows).
pub fn release(cgroup: &Cgroup) -> Result<(), BindError> {
    write_rule(cgroup, "devices.allow", "a")
}

/// Whether `cgroup` can hold a v1 binding at all: the file exists.
pub fn supported(cgroup: &Cgroup) -> bool {
    Path::new(&cgroup.file("devices.allow")).exists()
}
