//! `/etc/subuid`: which user owns which subordinate uids. A user's rootless containers
//! (podman, rootless docker) run as those uids; discovery's per-user cap charges them to the
//! user who owns them, so that one user cannot count as thousands.

use std::{io::Read, path::Path};

use crate::probes::{Probes, SubordinateUids};

/// Where the ranges are (shadow-utils' file, read by newuidmap).
pub const SUBUID_FILE: &str = "/etc/subuid";

/// The most read of the file: ~30 bytes a line.
const SUBUID_MAX_BYTES: u64 = 4 << 20;

/// The ranges in `path`, and a line for each entry that could not be used. A missing file is no
/// ranges (nobody has subordinate uids).
pub fn read(path: &Path) -> Result<(Vec<SubordinateUids>, Vec<String>), String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(SUBUID_MAX_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(parse(&String::from_utf8_lossy(&bytes), user_id))
}

/// Tells the kernel who owns which subordinate uids in `path`; says what it could not use (the
/// cap then counts those uids as users of their own, which is never fatal).
pub(super) fn apply(probes: &mut Probes, path: &Path) {
    let shown = path.display();
    let (ranges, unusable) = match read(path) {
        Ok(found) => found,
        Err(e) => {
            log::warn!("{e}: subordinate uids count as users of their own for games.max_per_user");
            return;
        }
    };
    if !unusable.is_empty() {
        log::warn!(
            "{shown}: {} of its entries not used (a malformed line or an unknown user), their uids \
             count as users of their own for games.max_per_user: {}",
            unusable.len(),
            unusable.join("; ")
        );
    }
    match probes.set_subuid_owners(&ranges) {
        Ok(0) if ranges.is_empty() => {}
        Ok(0) => log::info!(
            "{shown}: {} ranges of subordinate uids, each charged to its owner for \
             games.max_per_user",
            ranges.len()
        ),
        Ok(left_out) => log::warn!(
            "{shown}: {left_out} of {} ranges did not fit in the kernel's table; their uids \
             count as users of their own for games.max_per_user",
            ranges.len()
        ),
        Err(e) => log::warn!(
            "cannot tell the kernel the owners of {shown}'s subordinate uids: {e}; they count \
             as users of their own for games.max_per_user"
        ),
    }
}

/// Parses `owner:start:count` lines (owner a name or a uid); `lookup` finds a name's uid.
fn parse(text: &str, lookup: impl Fn(&str) -> Option<u32>) -> (Vec<SubordinateUids>, Vec<String>) {
    let mut ranges = Vec::new();
    let mut unusable = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let parsed = match fields[..] {
            [owner, start, count] => {
                start
                    .parse()
                    .ok()
                    .zip(count.parse().ok())
                    .and_then(|(start, count)| {
                        let owner = owner.parse().ok().or_else(|| lookup(owner))?;
                        Some(SubordinateUids {
                            owner,
                            start,
                            count,
                        })
                    })
            }
            _ => None,
        };
        match parsed {
            Some(range) => ranges.push(range),
            None => unusable.push(format!(
                "line {}: {:?}",
                n + 1,
                crate::identity::escape_controls(line)
            )),
        }
    }
    (ranges, unusable)
}

/// The uid of the user named `name` (through the system's user database), or None.
fn user_id(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    for size in [16usize << 10, 256 << 10] {
        let mut user = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: every pointer is valid for the call: c_name is NUL-terminated, user and found
        // are writable, and buf is writable for buf.len() bytes. The result is read only
        // through `found`, which getpwnam_r sets to &user (initialised) on success, or null.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                user.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE {
            continue;
        }
        if rc != 0 || found.is_null() {
            return None;
        }
        // SAFETY: found is non-null, so it points at the initialised `user`.
        return Some(unsafe { (*found).pw_uid });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subuid_lines_name_their_owner_by_name_or_uid() {
        let text = "# comment\nalice:100000:65536\n1001:165536:65536\n\nghost:231072:65536\n\
                    bob:x:1\nbroken\n";
        let (ranges, unusable) = parse(text, |name| (name == "alice").then_some(1000));
        assert_eq!(
            ranges,
            vec![
                SubordinateUids {
                    owner: 1000,
                    start: 100_000,
                    count: 65_536
                },
                SubordinateUids {
                    owner: 1001,
                    start: 165_536,
                    count: 65_536
                },
            ]
        );
        // An unknown user and malformed lines are said, not guessed.
        assert_eq!(unusable.len(), 3, "{unusable:?}");
        assert!(unusable[0].starts_with("line 5:"), "{unusable:?}");
    }

    #[test]
    fn root_is_found_and_a_missing_file_is_no_ranges() {
        assert_eq!(user_id("root"), Some(0));
        assert_eq!(user_id("no-such-user-here"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            read(&dir.path().join("subuid")),
            Ok((Vec::new(), Vec::new()))
        );
    }
}
