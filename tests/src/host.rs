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

/// Loads a two-instruction cgroup device program that allows (`r0 = 1; exit`) or denies
/// (`r0 = 0; exit`) everything, named `other_tool`, and attaches it to `cgroup` with
/// `BPF_PROG_ATTACH` and `BPF_F_ALLOW_MULTI`: how runc and systemd install their device
/// policies (a container engine's allows the container's own devices). It stays attached until
/// the cgroup is removed.
pub fn attach_device_program_like_runc(cgroup: &Path, allow: bool) {
    use std::os::fd::AsRawFd;

    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    #[repr(C)]
    #[derive(Default)]
    struct ProgAttach {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
        replace_bpf_fd: u32,
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_ALLOW_MULTI: u32 = 2;
    // mov64 r0, IMM (opcode 0xb7, the immediate in the top 32 bits); exit (0x95).
    let insns: [u64; 2] = [0xb7 | (u64::from(allow) << 32), 0x95];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"other_tool");
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: a BPF_PROG_LOAD attribute pointing at live instruction and license buffers.
    let prog = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut load as *mut ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    assert!(
        prog >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    let dir = std::fs::File::open(cgroup).expect("open cgroup");
    let mut attach = ProgAttach {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: a BPF_PROG_ATTACH attribute with descriptors we hold.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &mut attach as *mut ProgAttach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    assert_eq!(
        ret,
        0,
        "BPF_PROG_ATTACH: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: closing the program descriptor we own; the attachment keeps the program.
    unsafe { libc::close(prog as i32) };
}
