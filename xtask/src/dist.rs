//! Shipping the agent: `cargo xtask package` (a Debian package built with dpkg-deb) and
//! `cargo xtask install` / `uninstall` (the same files under /usr/local, for people who build
//! from source). Both lay out the same set of files ([`Files`]): the binary, the systemd unit
//! with `ExecStart` where the binary is, the example configuration, man pages and shell
//! completions generated from the agent's own command-line definitions, and the licence.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::util::{display, run, step};

pub const PACKAGE: &str = "nvbind-agent";
/// Where the dist unit (and a source install with the default prefix) has the binary.
const UNIT_BINARY: &str = "/usr/local/bin/nvbind-agent";
const UNIT_DOCS: &str = "/usr/local/share/doc/nvbind";
/// What the agent dlopens when it is there (Vulkan's and OpenGL's loaders, to find present
/// and compile functions); never required.
const RECOMMENDS: &str = "libvulkan1, libegl1, libgl1";
/// NVIDIA's management library, which NVML counters need (non-free; only for NVIDIA hosts).
const SUGGESTS: &str = "libnvidia-ml1";
/// The maintainer scripts, in dist/debian/.
const MAINTAINER_SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];
/// Written by `install`, read by `uninstall`: what was put where.
const MANIFEST: &str = "share/nvbind/installed-files";

/// Every file installed, relative to the root it is installed under (`/` or a staging tree),
/// and the data each one holds.
struct Files {
    entries: Vec<(PathBuf, Vec<u8>, u32)>,
}

impl Files {
    fn add(&mut self, path: impl Into<PathBuf>, data: Vec<u8>, mode: u32) {
        self.entries.push((path.into(), data, mode));
    }
}

/// Where things go under a prefix (`/usr` for the package, `/usr/local` from source).
struct Layout {
    prefix: PathBuf,
    /// The unit's directory: the package's `/lib/systemd/system`, or `/etc/systemd/system` for
    /// a source install (systemd reads it whatever the prefix).
    unit_dir: PathBuf,
    doc_dir: PathBuf,
}

impl Layout {
    fn package() -> Layout {
        Layout {
            prefix: "/usr".into(),
            unit_dir: "/lib/systemd/system".into(),
            doc_dir: format!("/usr/share/doc/{PACKAGE}").into(),
        }
    }

    fn source(prefix: &Path) -> Layout {
        Layout {
            prefix: prefix.to_path_buf(),
            unit_dir: "/etc/systemd/system".into(),
            doc_dir: prefix.join("share/doc/nvbind"),
        }
    }

    fn binary(&self) -> PathBuf {
        self.prefix.join("bin/nvbind-agent")
    }
}

/// Lays out every file for `layout`, from the built `agent` and the repository at `root`.
/// `gzip_man`: man pages compressed, as Debian ships them.
fn files(root: &Path, agent: &Path, layout: &Layout, gzip_man: bool) -> Result<Files> {
    let mut f = Files {
        entries: Vec::new(),
    };
    let read = |rel: &str| {
        fs::read(root.join(rel)).with_context(|| format!("read {rel} from the repository"))
    };
    f.add(
        layout.binary(),
        fs::read(agent).with_context(|| format!("read {}", agent.display()))?,
        0o755,
    );
    let unit = String::from_utf8(read("dist/nvbind-agent.service")?)?;
    if !unit.contains(&format!("ExecStart={UNIT_BINARY}")) {
        bail!("dist/nvbind-agent.service has no ExecStart={UNIT_BINARY} to point elsewhere");
    }
    let unit = unit
        .replace(UNIT_BINARY, &layout.binary().display().to_string())
        .replace(UNIT_DOCS, &layout.doc_dir.display().to_string());
    f.add(
        layout.unit_dir.join("nvbind-agent.service"),
        unit.into_bytes(),
        0o644,
    );
    f.add("/etc/nvbind/agent.toml", read("dist/agent.toml")?, 0o644);
    f.add(
        layout.doc_dir.join("daemon.md"),
        read("docs/daemon.md")?,
        0o644,
    );
    f.add(layout.doc_dir.join("README.md"), read("README.md")?, 0o644);

    // Man pages and completions, from the agent's own definitions.
    let generated = private_dir("nvbind-docs-")?;
    let generated = generated.path();
    run(Command::new(agent).arg("__generate-docs").arg(generated))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(generated)?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    let man1 = layout.prefix.join("share/man/man1");
    for page in pages {
        let name = page.file_name().context("a man page's name")?.to_owned();
        let data = fs::read(&page)?;
        if gzip_man {
            let mut gz_name = name.clone();
            gz_name.push(".gz");
            f.add(man1.join(gz_name), gzip(&data)?, 0o644);
        } else {
            f.add(man1.join(name), data, 0o644);
        }
    }
    let completion = |name: &str| fs::read(generated.join(name));
    let share = layout.prefix.join("share");
    f.add(
        share.join("bash-completion/completions/nvbind-agent"),
        completion("nvbind-agent.bash")?,
        0o644,
    );
    f.add(
        share.join("zsh/vendor-completions/_nvbind-agent"),
        completion("_nvbind-agent")?,
        0o644,
    );
    f.add(
        share.join("fish/vendor_completions.d/nvbind-agent.fish"),
        completion("nvbind-agent.fish")?,
        0o644,
    );
    Ok(f)
}

/// A fresh private directory (0700, a name nobody can guess), removed when dropped.
fn private_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create a temporary directory")
}

/// gzip -9n: no name or time in the header, so the same page compresses to the same bytes.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip's writer panicked"))??;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

/// Writes `files` under `root` (a staging tree or `/`), making directories 0755.
fn write_files(files: &Files, root: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (path, data, mode) in &files.entries {
        let target = root.join(path.strip_prefix("/").unwrap_or(path));
        if let Some(dir) = target.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("create {}", dir.display()))?;
        }
        // Replaced, not written through: a running binary stays intact, and a symlink planted
        // where a file goes is replaced rather than followed.
        let mut temporary = target.clone().into_os_string();
        temporary.push(".nvbind-new");
        let temporary = PathBuf::from(temporary);
        let _ = fs::remove_file(&temporary);
        fs::write(&temporary, data).with_context(|| format!("write {}", temporary.display()))?;
        fs::set_permissions(&temporary, fs::Permissions::from_mode(*mode))?;
        fs::rename(&temporary, &target).with_context(|| format!("install {}", target.display()))?;
        written.push(path.clone());
    }
    Ok(written)
}

/// Options of `cargo xtask package`.
pub struct PackageOptions {
    /// The agent to ship (default: the release build).
    pub binary: PathBuf,
    pub version: String,
    pub out: PathBuf,
}

/// Builds the .deb; returns its path.
pub fn package(root: &Path, options: &PackageOptions) -> Result<PathBuf> {
    step("package nvbind-agent (.deb)");
    let layout = Layout::package();
    let mut files = files(root, &options.binary, &layout, true)?;
    files.add(
        format!("/usr/share/doc/{PACKAGE}/copyright"),
        fs::read(root.join("dist/debian/copyright")).context("read dist/debian/copyright")?,
        0o644,
    );
    files.add(
        format!("/usr/share/doc/{PACKAGE}/changelog.gz"),
        gzip(changelog(&options.version).as_bytes())?,
        0o644,
    );
    let stage = options.out.join(format!("{PACKAGE}-stage"));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).with_context(|| format!("create {}", stage.display()))?;
    write_files(&files, &stage)?;
    // The binary without its debug sections (the eBPF objects are data: they stay).
    let shipped = stage.join("usr/bin/nvbind-agent");
    run(Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment"])
        .arg(&shipped))?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    fs::write(debian.join("conffiles"), "/etc/nvbind/agent.toml\n")?;
    for script in MAINTAINER_SCRIPTS {
        let path = debian.join(script);
        fs::copy(root.join("dist/debian").join(script), &path)
            .with_context(|| format!("copy dist/debian/{script}"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    // DEBIAN/md5sums: what `debsums` and `dpkg --verify` check the installed files against.
    let relative: Vec<String> = files
        .entries
        .iter()
        .map(|(path, _, _)| {
            path.display()
                .to_string()
                .trim_start_matches('/')
                .to_string()
        })
        .collect();
    let sums = stdout_of(Command::new("md5sum").args(&relative).current_dir(&stage))?;
    fs::write(debian.join("md5sums"), sums)?;
    let depends = shlib_depends(&shipped)?;
    let installed_kib = installed_size(&stage)?;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: nvbind developers <nvbind@nvbind.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}, adduser\n\
         Recommends: {RECOMMENDS}\n\
         Suggests: {SUGGESTS}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: frame-pacing and GPU telemetry agent for Linux games\n \
         nvbind measures every game's frames from the kernel, without injecting anything\n \
         into the game: eBPF probes on the present calls of Vulkan, GLX and EGL, on the\n \
         scheduler and on the GPU driver's ioctls. Its daemon tracks each game from its\n \
         first frame, explains each stutter (waiting for a CPU, in the GPU driver,\n \
         shader compilation, a throttling GPU), pairs the frames with the GPU's counters\n \
         and serves live numbers on a local API, a dashboard page and Prometheus\n \
         metrics; each session leaves a report. It can also bind GPUs to cgroups.\n",
        version = options.version,
    );
    fs::write(debian.join("control"), control)?;
    let deb = options
        .out
        .join(format!("{PACKAGE}_{}_amd64.deb", options.version));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    let _ = fs::remove_dir_all(&stage);
    Ok(deb)
}

/// A Debian changelog for a native package at `version`.
fn changelog(version: &str) -> String {
    format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  \
         * Built from the nvbind repository by `cargo xtask package`.\n\n \
         -- nvbind developers <nvbind@nvbind.invalid>  Mon, 07 Dec 2026 00:00:00 +0000\n"
    )
}

/// What the binary really loads, as Debian package names with versions (dpkg-shlibdeps).
fn shlib_depends(binary: &Path) -> Result<String> {
    let work = private_dir("nvbind-shlibdeps-")?;
    let work = work.path();
    fs::create_dir_all(work.join("debian"))?;
    fs::write(
        work.join("debian/control"),
        format!("Source: nvbind\n\nPackage: {PACKAGE}\nArchitecture: amd64\n"),
    )?;
    let out = stdout_of(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(binary)
            .current_dir(work),
    )
    .context("dpkg-shlibdeps (package dpkg-dev) could not list the binary's libraries")?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(|d| d.trim().to_string())
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

/// The standard output of a command that must succeed.
fn stdout_of(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installed-Size: KiB of the staged files (not DEBIAN/).
fn installed_size(stage: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if entry.file_name() != "DEBIAN" {
                    walk(&entry.path(), total)?;
                }
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}

/// `cargo xtask install`: the same files under `prefix` (the config only when there is none,
/// the unit in /etc/systemd/system), the reports group and directory, and a manifest for
/// `uninstall`. Starts nothing: it says how.
pub fn install(root: &Path, agent: &Path, prefix: &Path) -> Result<()> {
    absolute_prefix(prefix)?;
    step(&format!("install nvbind-agent under {}", prefix.display()));
    let layout = Layout::source(prefix);
    let mut files = files(root, agent, &layout, false)?;
    let config = Path::new("/etc/nvbind/agent.toml");
    if config.exists() {
        // The administrator's configuration is theirs.
        files.entries.retain(|(path, _, _)| path != config);
        eprintln!(
            "    kept {} (the example is in dist/agent.toml)",
            config.display()
        );
    }
    let written = write_files(&files, Path::new("/"))?;
    for path in &written {
        eprintln!("    {}", path.display());
    }
    let manifest = prefix.join(MANIFEST);
    let listed: Vec<String> = written
        .iter()
        .filter(|p| p.as_path() != config)
        .map(|p| p.display().to_string())
        .collect();
    fs::create_dir_all(manifest.parent().context("the manifest's directory")?)?;
    fs::write(&manifest, listed.join("\n") + "\n")
        .with_context(|| format!("write {}", manifest.display()))?;
    reports_group_and_directory()?;
    if Path::new("/run/systemd/system").is_dir() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
        eprintln!("    start it: systemctl enable --now nvbind-agent");
    } else {
        eprintln!("    systemd is not running here: start the daemon with `sudo nvbind-agent`");
    }
    Ok(())
}

/// The `nvbind` group (its members read the session reports) and the reports directory, as
/// the package's postinst makes them.
fn reports_group_and_directory() -> Result<()> {
    let has_group = Command::new("getent")
        .args(["group", "nvbind"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_group {
        run(Command::new("groupadd").args(["--system", "nvbind"]))?;
    }
    run(Command::new("install").args(["-d", "-m", "0755", "/var/lib/nvbind"]))?;
    run(Command::new("install").args([
        "-d",
        "-m",
        "2750",
        "-o",
        "root",
        "-g",
        "nvbind",
        "/var/lib/nvbind/reports",
    ]))
}

/// `cargo xtask uninstall`: removes what `install` put under `prefix` (its manifest), leaving
/// the configuration, the reports and any binding in force.
pub fn uninstall(prefix: &Path) -> Result<()> {
    absolute_prefix(prefix)?;
    step(&format!("uninstall nvbind-agent from {}", prefix.display()));
    let manifest = prefix.join(MANIFEST);
    let listed = match fs::read_to_string(&manifest) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist: nothing was installed under {} by `cargo xtask install` \
             (give the --prefix it was installed with)",
            manifest.display(),
            prefix.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("read {}", manifest.display())),
    };
    if Path::new("/run/systemd/system").is_dir() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "nvbind-agent"])
            .status();
    }
    for line in listed.lines().filter(|l| !l.is_empty()) {
        let path = Path::new(line);
        match fs::remove_file(path) {
            Ok(()) => eprintln!("    removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
        }
    }
    fs::remove_file(&manifest).with_context(|| format!("remove {}", manifest.display()))?;
    if Path::new("/run/systemd/system").is_dir() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    eprintln!("    kept /etc/nvbind, /var/lib/nvbind/reports and the bindings in force");
    Ok(())
}

/// The unit's ExecStart must be an absolute path, so the prefix must be one.
fn absolute_prefix(prefix: &Path) -> Result<()> {
    if !prefix.is_absolute() {
        bail!(
            "--prefix {} is not an absolute path (the systemd unit names the binary by its \
             full path): give one such as /usr/local",
            prefix.display()
        );
    }
    Ok(())
}
