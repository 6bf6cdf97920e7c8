//! A real container engine for the tests: Debian's Podman with runc, a local image built from
//! busybox-static (no registry is reachable here), and CDI specs written where Podman reads them.
//!
//! How Podman is run here, and why:
//! - `--runtime runc`: crun refuses this machine's hybrid cgroup layout;
//! - `--cgroup-manager cgroupfs`: PID 1 is not systemd;
//! - `--events-backend file`: there is no journald;
//! - `--network none`: nothing here needs a network, and no network stack is set up;
//! - `--ulimit nofile=1024:1024 --ulimit nproc=4096:4096` on `run`: Podman asks for rlimits
//!   above this machine's hard limits by default, which runc cannot set ("error setting rlimit
//!   type 7: operation not permitted").

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use crate::{agent, stderr, FixtureHost};

/// The test image, built once per machine (and rebuilt if it was removed).
pub const IMAGE: &str = "localhost/nvbind-test-busybox:1";

/// The busybox-static binary the image is made of.
const BUSYBOX: &str = "/bin/busybox";

/// `podman GLOBAL-OPTIONS ARGS`.
pub fn podman(args: &[&str]) -> Output {
    let found = Command::new("podman").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "NOT RUN: podman is missing (`cargo xtask test` installs podman and runc)"
    );
    Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .args(args)
        .output()
        .expect("run podman")
}

/// `podman ARGS`, which must succeed; its standard output, trimmed.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {} failed: {}",
        args.join(" "),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The label of every container the tests start.
const LABEL: &str = "nvbind-test=1";

/// The test image: `/bin/busybox` (static) alone, imported with `podman import`. The first call
/// also removes containers a killed test run left.
pub fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let left = podman_ok(&[
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label={LABEL}"),
        ]);
        for id in left.split_whitespace() {
            let _ = podman(&["rm", "--force", "--time", "0", id]);
        }
        if podman(&["image", "exists", IMAGE]).status.success() {
            return;
        }
        assert!(
            Path::new(BUSYBOX).exists(),
            "NOT RUN: {BUSYBOX} is missing (`cargo xtask test` installs busybox-static)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("rootfs/bin");
        std::fs::create_dir_all(&bin).expect("mkdir rootfs");
        std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
        let tar = dir.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(dir.path().join("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(status.success(), "tar of the image's rootfs failed");
        podman_ok(&["import", &tar.display().to_string(), IMAGE]);
    });
    IMAGE
}

/// A CDI spec of a fixture host's GPUs, written by `nvbind-agent cdi generate` into
/// `/var/run/cdi` (where Podman reads specs) under a kind of its own, and removed when dropped.
pub struct CdiSpec {
    pub path: PathBuf,
    /// `vendor/class`, unique to this spec, so that no other spec on the machine (a real
    /// nvbind one, or one a killed test left) can shadow or clash with its devices.
    pub kind: String,
    /// The spec as written.
    pub json: serde_json::Value,
}

impl CdiSpec {
    pub fn write(host: &FixtureHost, name: &str) -> CdiSpec {
        let dir = Path::new("/var/run/cdi");
        std::fs::create_dir_all(dir).expect("mkdir /var/run/cdi");
        // Specs a killed test left behind would only clutter the engines' view.
        for entry in std::fs::read_dir(dir).expect("read /var/run/cdi").flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with("nvbind-test-") && file.ends_with(".json") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let pid = std::process::id();
        let kind = format!("nvbind-test-{name}-{pid}.io/gpu");
        let path = dir.join(format!("nvbind-test-{name}-{pid}.json"));
        let mut args = vec![
            "cdi".to_string(),
            "generate".to_string(),
            "--nvml".to_string(),
            "never".to_string(),
            "--kind".to_string(),
            kind.clone(),
            "--output".to_string(),
            path.display().to_string(),
        ];
        args.extend(host.root_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent(&args);
        assert!(out.status.success(), "cdi generate: {}", stderr(&out));
        let text = std::fs::read_to_string(&path).expect("read the spec");
        CdiSpec {
            json: serde_json::from_str(&text).expect("the spec is JSON"),
            path,
            kind,
        }
    }

    /// `kind=name`, as `--device` takes it.
    pub fn device(&self, name: &str) -> String {
        format!("{}={name}", self.kind)
    }

    /// The container paths of device `name`'s nodes and the spec's shared nodes.
    pub fn nodes_of(&self, name: &str) -> Vec<String> {
        let device = self.json["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("no device {name} in {}", self.json));
        let mut paths: Vec<String> = [&device["containerEdits"], &self.json["containerEdits"]]
            .iter()
            .flat_map(|e| e["deviceNodes"].as_array().cloned().unwrap_or_default())
            .map(|n| n["path"].as_str().expect("path").to_string())
            .collect();
        paths.sort();
        paths
    }
}

impl Drop for CdiSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A running container, removed when dropped.
pub struct Container {
    pub id: String,
}

impl Container {
    /// Starts `sleep` in the test image with `--device` for each of `devices`.
    pub fn start(devices: &[String]) -> Container {
        let image = image();
        let mut args = vec![
            "run",
            "--detach",
            "--rm",
            "--label",
            LABEL,
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ];
        for device in devices {
            args.extend(["--device", device.as_str()]);
        }
        args.extend([image, "/bin/busybox", "sleep", "600"]);
        let id = podman_ok(&args);
        assert_eq!(id.len(), 64, "podman run printed {id:?}");
        Container { id }
    }

    /// The container's first process, as the host sees it.
    pub fn pid(&self) -> u32 {
        podman_ok(&["inspect", "--format", "{{.State.Pid}}", &self.id])
            .parse()
            .expect("a pid")
    }

    /// `podman exec` of a busybox shell script.
    pub fn exec(&self, script: &str) -> Output {
        podman(&["exec", &self.id, "/bin/busybox", "sh", "-c", script])
    }

    /// The character devices in the container's /dev and /dev/dri: path → "major:minor".
    pub fn char_devices(&self) -> BTreeMap<String, String> {
        // busybox stat: %t and %T are the major and minor in hexadecimal.
        let out = self.exec(
            "for f in /dev/* /dev/dri/*; do [ -c \"$f\" ] && /bin/busybox stat -c '%n %t %T' \"$f\"; done; true",
        );
        assert!(out.status.success(), "exec: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(f.len(), 3, "stat printed {line:?}");
                let hex = |s: &str| u32::from_str_radix(s, 16).expect("hexadecimal");
                (f[0].to_string(), format!("{}:{}", hex(f[1]), hex(f[2])))
            })
            .collect()
    }

    /// What opening each node gives inside the container: "ok", or the error as busybox prints
    /// it ("Operation not permitted", "No such device or address", ...).
    pub fn open_results(&self, nodes: &[&str]) -> BTreeMap<String, String> {
        let script: String = nodes
            .iter()
            .map(|n| {
                format!("if /bin/busybox head -c 1 {n} >/dev/null; then echo \"{n}: ok\" >&2; fi; ")
            })
            .collect();
        let out = self.exec(&script);
        // busybox: "head: /dev/dri/card0: Operation not permitted"; Podman's own warnings
        // ("Could not locate device 226:0 on host") are other lines.
        let err = stderr(&out);
        nodes
            .iter()
            .map(|n| {
                let result = err
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("head: ")
                            .unwrap_or(l)
                            .strip_prefix(&format!("{n}: "))
                    })
                    .unwrap_or_else(|| panic!("no result for {n} in {err:?}"));
                (n.to_string(), result.to_string())
            })
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.id]);
    }
}
