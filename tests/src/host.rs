//! The host the tests shape: GPU fixture hosts, a private BPF filesystem, cgroups.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{probe_bin, stderr};

/// A GPU fixture host (`tests/fixtures/hosts/<name>`) copied into a temporary directory, with the
/// device nodes its `dev.txt` lists created by `mknod` (git cannot hold device nodes; creating
/// them needs root). Pass its roots to the agent with [`FixtureHost::root_args`].
pub struct FixtureHost {
    pub dir: tempfile::TempDir,
}

impl FixtureHost {
    pub fn new(name: &str) -> FixtureHost {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/hosts")
            .join(name);
        assert!(src.is_dir(), "no fixture host {}", src.display());
        let dir = tempfile::tempdir().expect("tempdir");
        // `cp -a` keeps sysfs's relative symlinks as they are.
        let status = Command::new("cp")
            .arg("-a")
            .arg(src.join("sys"))
            .arg(src.join("proc"))
            .arg(dir.path())
            .status()
            .expect("run cp");
        assert!(status.success(), "copying {} failed", src.display());
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).expect("mkdir dev");
        let listing = std::fs::read_to_string(src.join("dev.txt")).expect("dev.txt");
        for line in listing.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 4, "dev.txt line {line:?}");
            let path = dev.join(f[0]);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            let status = Command::new("mknod")
                .arg(&path)
                .args(&f[1..])
                .status()
                .expect("run mknod");
            assert!(
                status.success(),
                "mknod {} failed (device nodes need root)",
                path.display()
            );
        }
        FixtureHost { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `--sysfs-root … --dev-root … --proc-root …` for the agent.
    pub fn root_args(&self) -> Vec<String> {
        ["sys", "dev", "proc"]
            .iter()
            .zip(["--sysfs-root", "--dev-root", "--proc-root"])
            .flat_map(|(d, flag)| [flag.to_string(), self.path(d).display().to_string()])
            .collect()
    }
}

/// A private BPF filesystem, unmounted (with every pin in it) when dropped.
pub struct Bpffs {
    pub dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> Bpffs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t bpf failed");
        Bpffs { dir }
    }

    pub fn path(&self) -> String {
        self.dir.path().display().to_string()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tree {
    V1,
    V2,
}

/// Where this machine mounts the hierarchy (found, not assumed).
pub fn mount_point(tree: Tree) -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read mounts");
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| match tree {
            Tree::V2 => f.get(2) == Some(&"cgroup2"),
            Tree::V1 => f.get(2) == Some(&"cgroup") && f[3].split(',').any(|o| o == "devices"),
        })
        .map(|f| PathBuf::from(f[1]))
        .unwrap_or_else(|| {
            panic!("NOT RUN: no {tree:?} hierarchy mounted here (the binding for it is untested)")
        })
}

/// A fresh cgroup, removed when dropped.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(tree: Tree, name: &str) -> TestCgroup {
        let path = mount_point(tree).join(format!("nvbind-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).expect("mkdir cgroup");
        TestCgroup { path }
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }

    /// What opening each node gives a process inside this cgroup.
    pub fn probe(&self, nodes: &[PathBuf]) -> BTreeMap<String, String> {
        let out = Command::new(probe_bin())
            .arg("--join")
            .arg(self.path.join("cgroup.procs"))
            .args(nodes)
            .output()
            .expect("run open-probe");
        assert!(out.status.success(), "open-probe: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("open-probe prints JSON")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The probes have exited; the kernel may take a moment to notice.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
