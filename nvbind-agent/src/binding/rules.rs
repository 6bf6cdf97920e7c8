//! The allowlist a binding enforces: the chosen GPUs' device nodes, the companion nodes they
//! need, and the standard safe devices every process expects.

use std::{collections::BTreeMap, fmt};

use nvbind_common::device_policy::{
    DeviceRuleKey, ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE, ANY_MINOR, KIND_BLOCK, KIND_CHAR,
};
use serde::{Deserialize, Serialize};

use crate::gpu::GpuInfo;

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Char,
    Block,
}

impl DeviceKind {
    fn letter(self) -> char {
        match self {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        }
    }
}

/// One allowed device (or every minor of a major), with the access granted and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    pub major: u32,
    /// `None`: every minor of `major`.
    pub minor: Option<u32>,
    /// `r`, `w`, `m` (mknod), as cgroup v1 writes them.
    pub access: String,
    /// What the rule is for (`/dev/nvidia0 (GPU 0)`, `/dev/null`).
    pub reason: String,
}

/// The safe devices: what systemd's `DevicePolicy=closed` and container engines allow every
/// process. Their numbers are fixed by the kernel's devices.txt ABI (mem 1, tty 5, Unix98 pty
/// slaves 136), so they are named here rather than looked up.
const SAFE_DEVICES: [(&str, u32, Option<u32>); 8] = [
    ("/dev/null", 1, Some(3)),
    ("/dev/zero", 1, Some(5)),
    ("/dev/full", 1, Some(7)),
    ("/dev/random", 1, Some(8)),
    ("/dev/urandom", 1, Some(9)),
    ("/dev/tty", 5, Some(0)),
    ("/dev/ptmx", 5, Some(2)),
    ("/dev/pts/*", 136, None),
];

impl DeviceRule {
    /// The rule as a cgroup v1 `devices.allow` line, and as `devices.list` shows it.
    pub fn v1_line(&self) -> String {
        format!(
            "{} {}:{} {}",
            self.kind.letter(),
            self.major,
            self.minor.map_or("*".to_string(), |m| m.to_string()),
            self.access
        )
    }

    /// The rules-map key of the v2 program.
    pub fn key(&self) -> DeviceRuleKey {
        DeviceRuleKey {
            kind: match self.kind {
                DeviceKind::Char => KIND_CHAR,
                DeviceKind::Block => KIND_BLOCK,
            },
            major: self.major,
            minor: self.minor.unwrap_or(ANY_MINOR),
        }
    }

    /// The access bits of the v2 program (`BPF_DEVCG_ACC_*`).
    pub fn access_bits(&self) -> u32 {
        self.access.chars().fold(0, |bits, c| {
            bits | match c {
                'r' => ACCESS_READ,
                'w' => ACCESS_WRITE,
                'm' => ACCESS_MKNOD,
                _ => 0,
            }
        })
    }

    /// Whether two rules allow the same device with the same access (reasons aside).
    pub fn same_grant(&self, other: &DeviceRule) -> bool {
        self.kind == other.kind
            && self.major == other.major
            && self.minor == other.minor
            && self.access_bits() == other.access_bits()
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<16} {}", self.v1_line(), self.reason)
    }
}

/// The allowlist for `gpus`: each one's own nodes, the shared companion nodes (`nvidiactl`,
/// `nvidia-uvm`, `kfd`, ...) of their vendors, then the safe devices. Sorted and deduplicated by
/// device; the first reason wins.
pub fn allowlist(gpus: &[&GpuInfo], dev_root: &std::path::Path) -> Vec<DeviceRule> {
    let mut rules: BTreeMap<(DeviceKind, u32, Option<u32>), DeviceRule> = BTreeMap::new();
    for gpu in gpus {
        for node in &gpu.device_nodes {
            let shown = std::path::Path::new("/dev").join(
                node.path
                    .strip_prefix(dev_root)
                    .unwrap_or(node.path.as_path()),
            );
            let reason = if node.shared {
                format!(
                    "{} (needed by {} GPUs)",
                    shown.display(),
                    gpu.vendor.label()
                )
            } else {
                format!(
                    "{} (GPU {}, {})",
                    shown.display(),
                    gpu.index,
                    gpu.pci_address
                )
            };
            rules
                .entry((DeviceKind::Char, node.major, Some(node.minor)))
                .or_insert(DeviceRule {
                    kind: DeviceKind::Char,
                    major: node.major,
                    minor: Some(node.minor),
                    access: "rw".into(),
                    reason,
                });
        }
    }
    for (name, major, minor) in SAFE_DEVICES {
        rules
            .entry((DeviceKind::Char, major, minor))
            .or_insert(DeviceRule {
                kind: DeviceKind::Char,
                major,
                minor,
                access: "rw".into(),
                reason: format!("{name} (safe device)"),
            });
    }
    rules.into_values().collect()
}

/// Parses `devices.list` lines (`c 195:0 rw`, `a *:* rwm`) into (type, major, minor, access),
/// with `None` for `*`.
pub fn parse_v1_line(line: &str) -> Option<(char, Option<u32>, Option<u32>, String)> {
    let mut parts = line.split_whitespace();
    let kind = parts.next()?.chars().next()?;
    let (major, minor) = parts.next()?.split_once(':')?;
    let access = parts.next()?.to_string();
    let number = |s: &str| {
        if s == "*" {
            Ok(None)
        } else {
            s.parse().map(Some)
        }
    };
    Some((kind, number(major).ok()?, number(minor).ok()?, access))
}

/// Whether `devices.list` shows exactly `rules` (order and access-letter order aside).
pub fn v1_list_matches(list: &str, rules: &[DeviceRule]) -> bool {
    let normalise = |kind: char, major: Option<u32>, minor: Option<u32>, access: &str| {
        let mut letters: Vec<char> = access.chars().collect();
        letters.sort_unstable();
        (kind, major, minor, letters)
    };
    let mut shown: Vec<_> = list
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_v1_line(l).map(|(k, ma, mi, a)| normalise(k, ma, mi, &a)))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    let mut wanted: Vec<_> = rules
        .iter()
        .map(|r| normalise(r.kind.letter(), Some(r.major), r.minor, &r.access))
        .collect();
    shown.sort();
    wanted.sort();
    shown == wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{test_gpu, DeviceNode, NodeKind, Vendor};
    use std::path::{Path, PathBuf};

    fn node(path: &str, kind: NodeKind, major: u32, minor: u32, shared: bool) -> DeviceNode {
        DeviceNode {
            path: PathBuf::from(path),
            kind,
            major,
            minor,
            shared,
        }
    }

    #[test]
    fn allowlist_has_each_gpus_nodes_companions_once_and_safe_devices() {
        let mut a = test_gpu(Path::new("/sys/a"), Vendor::Nvidia, "nvidia");
        a.index = 0;
        a.device_nodes = vec![
            node("/fx/dev/nvidia0", NodeKind::NvidiaGpu, 195, 0, false),
            node("/fx/dev/nvidiactl", NodeKind::NvidiaCtl, 195, 255, true),
        ];
        let mut b = a.clone();
        b.index = 1;
        b.device_nodes = vec![
            node("/fx/dev/nvidia1", NodeKind::NvidiaGpu, 195, 1, false),
            node("/fx/dev/nvidiactl", NodeKind::NvidiaCtl, 195, 255, true),
        ];
        let rules = allowlist(&[&a, &b], Path::new("/fx/dev"));
        let lines: Vec<String> = rules.iter().map(DeviceRule::v1_line).collect();
        for wanted in [
            "c 195:0 rw",
            "c 195:1 rw",
            "c 195:255 rw",
            "c 1:3 rw",
            "c 136:* rw",
        ] {
            assert_eq!(
                lines.iter().filter(|l| *l == wanted).count(),
                1,
                "{wanted} once in {lines:?}"
            );
        }
        assert_eq!(rules.len(), 3 + SAFE_DEVICES.len());
        let gpu0 = rules.iter().find(|r| r.minor == Some(0) && r.major == 195);
        assert_eq!(
            gpu0.map(|r| r.reason.as_str()),
            Some("/dev/nvidia0 (GPU 0, 0000:03:00.0)")
        );
        // Only GPU 0: GPU 1's node is not allowed.
        let only_a = allowlist(&[&a], Path::new("/fx/dev"));
        assert!(!only_a.iter().any(|r| r.major == 195 && r.minor == Some(1)));
    }

    #[test]
    fn rules_become_map_keys_and_access_bits() {
        let rules = allowlist(&[], Path::new("/dev"));
        let pts = rules
            .iter()
            .find(|r| r.major == 136)
            .expect("pts is a safe device");
        assert_eq!(pts.key().minor, ANY_MINOR);
        assert_eq!(pts.key().kind, KIND_CHAR);
        assert_eq!(pts.access_bits(), ACCESS_READ | ACCESS_WRITE);
    }

    #[test]
    fn devices_list_is_compared_as_a_set() {
        let rules = allowlist(&[], Path::new("/dev"));
        let mut list: Vec<String> = rules.iter().map(DeviceRule::v1_line).collect();
        list.reverse();
        assert!(v1_list_matches(&list.join("\n"), &rules));
        // The kernel may print access letters in its own order.
        let swapped = list.join("\n").replace("c 1:3 rw", "c 1:3 wr");
        assert!(v1_list_matches(&swapped, &rules));
        assert!(!v1_list_matches("a *:* rwm\n", &rules));
        list.pop();
        assert!(!v1_list_matches(&list.join("\n"), &rules));
        assert_eq!(
            parse_v1_line("a *:* rwm"),
            Some(('a', None, None, "rwm".into()))
        );
    }
}
