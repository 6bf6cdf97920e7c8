//! The Debian package for real: built by `xtask package` (from the agent these tests built),
//! checked by lintian, and installed, upgraded, removed and purged by dpkg in an overlay of `/`
//! (a throwaway tmpfs upper layer, with /proc, /sys and /dev bound in), so that its maintainer
//! scripts and dependencies meet a real Debian system and nothing reaches this machine's own
//! files. The installed binary then runs `doctor` and records vkcube; the installed unit, man
//! pages and completions are checked with systemd-analyze, man and bash. No daemon is started:
//! PID 1 is not systemd here, and port 9090 is the daemon tests'.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, MutexGuard},
};

/// One overlay of `/` at a time.
static ONE_OVERLAY: Mutex<()> = Mutex::new(());

fn one_overlay() -> MutexGuard<'static, ()> {
    ONE_OVERLAY.lock().unwrap_or_else(|p| p.into_inner())
}

use nvbind_tests::{read_json, require_root, xtask_bin, Xvfb};

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Builds the package at `version` into `dir` from the agent the tests use.
fn package(dir: &Path, version: &str) -> PathBuf {
    let out = run(Command::new(xtask_bin())
        .args(["package", "--binary"])
        .arg(nvbind_tests::agent_bin())
        .args(["--version", version, "--out"])
        .arg(dir));
    // Its last line is the package's path (dpkg-deb speaks before it).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.trim().lines().last().unwrap_or_default());
    assert!(deb.is_file(), "xtask package printed {deb:?}");
    deb
}

/// `/` with a throwaway upper layer: whatever dpkg and the maintainer scripts write lands in a
/// tmpfs, unmounted (and gone) when this is dropped.
struct Overlay {
    base: tempfile::TempDir,
    mounts: Vec<PathBuf>,
}

impl Overlay {
    fn new() -> Overlay {
        let base = tempfile::tempdir().expect("tempdir");
        let mut o = Overlay {
            base,
            mounts: Vec::new(),
        };
        let layer = o.base.path().join("layer");
        let root = o.root();
        fs::create_dir_all(&layer).expect("layer dir");
        fs::create_dir_all(&root).expect("root dir");
        o.mount(&["-t", "tmpfs", "tmpfs"], &layer);
        fs::create_dir_all(layer.join("upper")).expect("upper");
        fs::create_dir_all(layer.join("work")).expect("work");
        let options = format!(
            "lowerdir=/,upperdir={},workdir={}",
            layer.join("upper").display(),
            layer.join("work").display()
        );
        o.mount(&["-t", "overlay", "overlay", "-o", &options], &root);
        for dir in ["proc", "sys", "dev"] {
            o.mount(&["--rbind", &format!("/{dir}")], &root.join(dir));
        }
        for dir in ["run", "tmp"] {
            o.mount(&["-t", "tmpfs", "tmpfs"], &root.join(dir));
        }
        // The workspace (the binaries under test, the repository xtask reads) at its own path,
        // wherever it is mounted.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace")
            .to_path_buf();
        let inside = root.join(workspace.strip_prefix("/").expect("an absolute path"));
        fs::create_dir_all(&inside).expect("the workspace's mount point");
        o.mount(&["--bind", &workspace.display().to_string()], &inside);
        o
    }

    fn mount(&mut self, args: &[&str], at: &Path) {
        run(Command::new("mount").args(args).arg(at));
        self.mounts.push(at.to_path_buf());
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    /// A path inside the overlay.
    fn path(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    /// Runs a command chrooted into the overlay.
    fn chroot(&self, args: &[&str]) -> Output {
        Command::new("chroot")
            .arg(self.root())
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("chroot")
    }

    fn chroot_ok(&self, args: &[&str]) -> String {
        let out = self.chroot(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    }

    /// Copies `deb` into the overlay's /tmp; returns its path there.
    fn copy_in(&self, deb: &Path) -> String {
        let name = deb.file_name().expect("a name").to_string_lossy();
        fs::copy(deb, self.path(&format!("/tmp/{name}"))).expect("copy the package in");
        format!("/tmp/{name}")
    }

    fn installed_version(&self) -> Option<String> {
        let out = self.chroot(&[
            "dpkg-query",
            "-W",
            "-f",
            "${Status} ${Version}",
            "nvbind-agent",
        ]);
        let status = text(&out);
        status
            .strip_prefix("install ok installed ")
            .map(|v| v.trim().to_string())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        for at in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-R").arg("-l").arg(at).status();
        }
    }
}

/// systemd's own checker passes the unit at `unit` inside the overlay. (Its `man:` page is
/// checked with `man -l`: man here searches the host's pages.)
fn assert_unit_verifies(overlay: &Overlay, unit: &str) {
    let verify = Command::new("systemd-analyze")
        .arg(format!("--root={}", overlay.root().display()))
        .args(["verify", "--man=no", unit])
        .output()
        .expect("systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify {unit}: {}",
        text(&verify)
    );
}

/// The group id `name` has inside the overlay.
fn group_id(overlay: &Overlay, name: &str) -> u32 {
    let line = overlay.chroot_ok(&["getent", "group", name]);
    line.split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("group {name}: {line}"))
}

#[test]
fn the_package_passes_lintian_and_installs_upgrades_and_removes_cleanly() {
    require_root();
    let _one = one_overlay();
    let dir = tempfile::tempdir().expect("tempdir");
    let first = package(dir.path(), "0.1.0");
    let second = package(dir.path(), "0.1.1");

    // lintian: no errors.
    let lint = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(&first)
        .output()
        .expect("NOT RUN: lintian is missing: run `cargo xtask setup`");
    let findings = text(&lint);
    assert!(lint.status.success(), "lintian:\n{findings}");
    assert!(
        !findings.lines().any(|l| l.starts_with("E:")),
        "lintian:\n{findings}"
    );
    // What it depends on is what the binary loads: the C library and its runtime, nothing of
    // Rust.
    let control = text(&run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&first)
        .arg("Depends")));
    assert!(control.contains("libc6 (>="), "{control}");
    assert!(!control.to_lowercase().contains("rust"), "{control}");

    let overlay = Overlay::new();
    let host_status = fs::read_to_string("/var/lib/dpkg/status").expect("dpkg status");

    // Install.
    let deb = overlay.copy_in(&first);
    overlay.chroot_ok(&["dpkg", "-i", &deb]);
    assert_eq!(overlay.installed_version().as_deref(), Some("0.1.0"));
    let binary = overlay.path("/usr/bin/nvbind-agent");
    assert!(binary
        .metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o111 != 0));
    let unit = fs::read_to_string(overlay.path("/lib/systemd/system/nvbind-agent.service"))
        .expect("the unit");
    assert!(unit.contains("ExecStart=/usr/bin/nvbind-agent\n"), "{unit}");
    assert!(overlay.path("/etc/nvbind/agent.toml").is_file());
    let conffiles = overlay.chroot_ok(&[
        "dpkg-query",
        "--showformat=${Conffiles}",
        "-W",
        "nvbind-agent",
    ]);
    assert!(conffiles.contains("/etc/nvbind/agent.toml"), "{conffiles}");
    // The reports directory: root's and the nvbind group's, setgid, nobody else's.
    let gid = group_id(&overlay, "nvbind");
    let reports = overlay.path("/var/lib/nvbind/reports");
    let meta = fs::metadata(&reports).expect("the reports directory");
    assert_eq!((meta.uid(), meta.gid()), (0, gid));
    assert_eq!(meta.mode() & 0o7777, 0o2750);
    // Enabled for the next boot (the link itself: its target is inside the overlay); nothing
    // started (systemd is not running here).
    let wants = overlay.path("/etc/systemd/system/multi-user.target.wants/nvbind-agent.service");
    assert!(wants.symlink_metadata().is_ok(), "enabled");
    let started = Command::new("pgrep")
        .args(["-f", "^/usr/bin/nvbind-agent"])
        .output();
    assert!(
        started.is_ok_and(|o| !o.status.success()),
        "no daemon started"
    );

    // The installed unit, man pages and completions.
    assert_unit_verifies(&overlay, "/lib/systemd/system/nvbind-agent.service");
    for page in [
        "nvbind-agent.1.gz",
        "nvbind-agent-top.1.gz",
        "nvbind-agent-record.1.gz",
    ] {
        let path = overlay.path(&format!("/usr/share/man/man1/{page}"));
        let rendered = run(Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "80"));
        let rendered = String::from_utf8_lossy(&rendered.stdout);
        assert!(rendered.contains("nvbind-agent"), "{page}: {rendered}");
        assert!(rendered.contains("SYNOPSIS"), "{page}: {rendered}");
    }
    let bash = overlay.path("/usr/share/bash-completion/completions/nvbind-agent");
    let completion = run(Command::new("bash").arg("-c").arg(format!(
        "source {} && complete -p nvbind-agent && \
         COMP_WORDS=(nvbind-agent re) COMP_CWORD=1 COMP_LINE='nvbind-agent re' COMP_POINT=15 \
         && f=$(complete -p nvbind-agent | sed -n 's/.* -F \\([^ ]*\\).*/\\1/p') \
         && \"$f\" nvbind-agent re nvbind-agent && echo \"${{COMPREPLY[@]}}\"",
        bash.display()
    )));
    let completion = String::from_utf8_lossy(&completion.stdout);
    assert!(completion.contains("complete"), "{completion}");
    assert!(
        completion.contains("record") && completion.contains("report"),
        "`nvbind-agent re<TAB>`: {completion}"
    );
    assert!(overlay
        .path("/usr/share/zsh/vendor-completions/_nvbind-agent")
        .is_file());
    assert!(overlay
        .path("/usr/share/fish/vendor_completions.d/nvbind-agent.fish")
        .is_file());

    // The installed binary: doctor, and a recording of vkcube.
    let doctor = run(Command::new(&binary).args(["doctor", "--json"]));
    let probes: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("doctor's JSON");
    assert!(probes.to_string().contains("\"attached\":true"), "{probes}");
    let x = Xvfb::start().expect("Xvfb");
    let report = dir.path().join("vkcube.json");
    run(Command::new(&binary)
        .args(["record", "--duration", "3", "--out"])
        .arg(&report)
        .args(["--", "vkcube"])
        .env("DISPLAY", &x.display));
    let report = read_json(&report);
    assert!(
        report["processes"][0]["frames"]["count"].as_u64() >= Some(30),
        "{}",
        report["processes"][0]["frames"]
    );

    // Upgrade: the administrator's edit of the config and the reports survive.
    let config = overlay.path("/etc/nvbind/agent.toml");
    let edited = fs::read_to_string(&config).expect("config") + "\n# edited by the admin\n";
    fs::write(&config, &edited).expect("edit the config");
    fs::write(reports.join("kept.json"), "{}").expect("a report");
    let deb = overlay.copy_in(&second);
    overlay.chroot_ok(&["dpkg", "-i", "--force-confold", &deb]);
    assert_eq!(overlay.installed_version().as_deref(), Some("0.1.1"));
    assert_eq!(fs::read_to_string(&config).expect("config"), edited);
    assert!(reports.join("kept.json").is_file());

    // Remove: the program goes, the config and the reports stay; purge: the config goes too.
    overlay.chroot_ok(&["dpkg", "-r", "nvbind-agent"]);
    assert!(!binary.exists());
    assert!(!overlay
        .path("/lib/systemd/system/nvbind-agent.service")
        .exists());
    assert!(config.is_file(), "remove keeps the config");
    assert!(
        reports.join("kept.json").is_file(),
        "remove keeps the reports"
    );
    overlay.chroot_ok(&["dpkg", "-P", "nvbind-agent"]);
    assert!(
        !overlay.path("/etc/nvbind").exists(),
        "purge removes the config"
    );
    assert!(
        reports.join("kept.json").is_file(),
        "purge keeps the reports"
    );
    assert!(
        wants.symlink_metadata().is_err(),
        "purge forgets the enablement"
    );
    assert_eq!(overlay.installed_version(), None);

    // And none of it reached this machine.
    drop(overlay);
    assert_eq!(
        fs::read_to_string("/var/lib/dpkg/status").expect("dpkg status"),
        host_status
    );
    assert!(!Path::new("/usr/bin/nvbind-agent").exists());
}

#[test]
fn install_from_source_puts_the_same_files_under_the_prefix_and_uninstall_takes_them_back() {
    require_root();
    let _one = one_overlay();
    let overlay = Overlay::new();
    let agent = nvbind_tests::agent_bin();
    let xtask = xtask_bin();
    let (agent, xtask) = (agent.display().to_string(), xtask.display().to_string());
    // An administrator's config is kept.
    fs::create_dir_all(overlay.path("/etc/nvbind")).expect("/etc/nvbind");
    fs::write(overlay.path("/etc/nvbind/agent.toml"), "# mine\n").expect("a config");
    let said = overlay.chroot_ok(&[
        &xtask, "install", "--binary", &agent, "--prefix", "/opt/nvb",
    ]);
    assert!(said.contains("kept /etc/nvbind/agent.toml"), "{said}");
    assert_eq!(
        fs::read_to_string(overlay.path("/etc/nvbind/agent.toml")).expect("config"),
        "# mine\n"
    );
    let unit = fs::read_to_string(overlay.path("/etc/systemd/system/nvbind-agent.service"))
        .expect("the unit");
    assert!(
        unit.contains("ExecStart=/opt/nvb/bin/nvbind-agent\n"),
        "{unit}"
    );
    assert_unit_verifies(&overlay, "/etc/systemd/system/nvbind-agent.service");
    let binary = overlay.path("/opt/nvb/bin/nvbind-agent");
    let version = run(Command::new(&binary).arg("--version"));
    assert!(
        text(&version).starts_with("nvbind-agent "),
        "{}",
        text(&version)
    );
    assert!(overlay
        .path("/opt/nvb/share/man/man1/nvbind-agent-top.1")
        .is_file());
    assert!(overlay
        .path("/opt/nvb/share/bash-completion/completions/nvbind-agent")
        .is_file());
    let gid = group_id(&overlay, "nvbind");
    let meta = fs::metadata(overlay.path("/var/lib/nvbind/reports")).expect("reports");
    assert_eq!((meta.gid(), meta.mode() & 0o7777), (gid, 0o2750));

    let said = overlay.chroot_ok(&[&xtask, "uninstall", "--prefix", "/opt/nvb"]);
    assert!(said.contains("kept /etc/nvbind"), "{said}");
    assert!(!binary.exists());
    assert!(!overlay
        .path("/etc/systemd/system/nvbind-agent.service")
        .exists());
    assert!(!overlay
        .path("/opt/nvb/share/man/man1/nvbind-agent.1")
        .exists());
    assert!(overlay.path("/etc/nvbind/agent.toml").is_file());
    // A second uninstall says there is nothing to take back, in one line.
    let again = overlay.chroot(&[&xtask, "uninstall", "--prefix", "/opt/nvb"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("nothing was installed under /opt/nvb"),
        "{}",
        text(&again)
    );
}
