//! cgroup v1: the `devices` controller's `devices.deny` / `devices.allow` files.
//!
//! The kernel takes one rule per write. A first binding writes `a` to `devices.deny` (deny
//! everything, drop every exception) and then each allowed device; a replacement first denies
//! what the new list drops and then allows what it adds, so the cgroup never holds more than the
//! old policy's rules plus the new one's, and never goes back to "allow all".
//!
//! `a` cannot be written to a cgroup that has child cgroups (EINVAL): bind a v1 cgroup before
//! creating children in it, and unbind it only without children.

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
    /// Part of the way between these rules (every earlier generation's) and others: an agent
    /// was killed while replacing them.
    Interrupted(&'a [DeviceRule]),
}

/// The rules of `from` that `to` does not have.
fn missing_from<'a>(
    from: &'a [DeviceRule],
    to: &'a [DeviceRule],
) -> impl Iterator<Item = &'a DeviceRule> {
    from.iter().filter(|f| !to.iter().any(|t| t.same_grant(f)))
}

fn deny_all_of<'a>(
    cgroup: &Cgroup,
    mut rules: impl Iterator<Item = &'a DeviceRule>,
) -> Result<(), BindError> {
    rules.try_for_each(|r| write_rule(cgroup, "devices.deny", &r.v1_line()))
}

/// Applies `new` over what the cgroup holds. Rules only the old policy has are denied before
/// the new ones are allowed, so the cgroup never holds more than the union of the two, and
/// rules both share (the safe devices) are never touched. On failure, puts the previous policy
/// back before returning the error.
pub fn apply(cgroup: &Cgroup, start: Start<'_>, new: &[DeviceRule]) -> Result<(), BindError> {
    let result = match start {
        Start::Unrestricted => {
            write_rule(cgroup, "devices.deny", "a").and_then(|()| allow_all_of(cgroup, new.iter()))
        }
        Start::Exactly(old) => deny_all_of(cgroup, missing_from(old, new))
            .and_then(|()| allow_all_of(cgroup, missing_from(new, old))),
        // Which of the new rules made it is unknown: allow them all (allowing an allowed
        // device again is harmless).
        Start::Interrupted(old) => deny_all_of(cgroup, missing_from(old, new))
            .and_then(|()| allow_all_of(cgroup, new.iter())),
    };
    if let Err(error) = result {
        let restored = match start {
            Start::Unrestricted => write_rule(cgroup, "devices.allow", "a"),
            Start::Exactly(old) | Start::Interrupted(old) => {
                deny_all_of(cgroup, missing_from(new, old))
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
