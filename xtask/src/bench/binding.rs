//! Device binding: how long binding and replacing take, and what the v2 policy adds to `open()`
//! of a device node with 1 versus 100 bound cgroups.
//!
//! The GPUs are the `mixed-nvidia-amd` fixture host's, with its device nodes made by `mknod`
//! (real majors, no driver: an allowed open fails fast with ENXIO, a denied one with EPERM, so
//! the measured cost is the permission check and not a driver). The pins go to a private bpffs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::median;
use crate::util::step;

const BINDS: usize = 15;
const SIBLINGS: usize = 100;
const OPENS: &str = "200000";

/// A copy of a fixture host with its device nodes, and a private bpffs; removed when dropped.
struct Lab {
    dir: PathBuf,
    bpffs: PathBuf,
    cgroups: Vec<PathBuf>,
}

impl Lab {
    fn new(root: &Path, dir: &Path) -> Result<Lab> {
        let _ = Command::new("umount")
            .arg(dir.join("bpffs"))
            .stderr(std::process::Stdio::null())
            .status();
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir.join("dev"))?;
        let host = root.join("tests/fixtures/hosts/mixed-nvidia-amd");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(host.join("sys"))
            .arg(host.join("proc"))
            .arg(dir)
            .status()?;
        if !copied.success() {
            bail!("copying the fixture host failed");
        }
        for line in fs::read_to_string(host.join("dev.txt"))?.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 4 || line.starts_with('#') {
                continue;
            }
            let node = dir.join("dev").join(f[0]);
            if let Some(parent) = node.parent() {
                fs::create_dir_all(parent)?;
            }
            let made = Command::new("mknod").arg(&node).args(&f[1..]).status()?;
            if !made.success() {
                bail!("mknod {} failed", node.display());
            }
        }
        let bpffs = dir.join("bpffs");
        fs::create_dir_all(&bpffs)?;
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs)
            .status()?;
        if !mounted.success() {
            bail!("mount -t bpf failed");
        }
        Ok(Lab {
            dir: dir.to_path_buf(),
            bpffs,
            cgroups: Vec::new(),
        })
    }

    fn node(&self, rel: &str) -> PathBuf {
        self.dir.join("dev").join(rel)
    }

    fn roots(&self) -> Vec<String> {
        ["sys", "dev", "proc"]
            .iter()
            .zip(["--sysfs-root", "--dev-root", "--proc-root"])
            .flat_map(|(d, flag)| [flag.to_string(), self.dir.join(d).display().to_string()])
            .collect()
    }

    fn cgroup(&mut self, mount: &Path, name: &str) -> Result<PathBuf> {
        let path = mount.join(name);
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        self.cgroups.push(path.clone());
        Ok(path)
    }

    /// Binds; returns the agent's own measure of the kernel work and the whole command's wall
    /// time (process start, GPU discovery, output), in ms.
    fn bind(&self, agent: &Path, cgroup: &Path, gpu: &str) -> Result<(f64, f64)> {
        let started = std::time::Instant::now();
        let out = Command::new(agent)
            .args(["bind", "--json", "--gpu", gpu, "--cgroup"])
            .arg(cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(self.roots())
            .output()?;
        if !out.status.success() {
            bail!(
                "bind failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let wall_ms = started.elapsed().as_secs_f64() * 1e3;
        let outcome: Value = serde_json::from_slice(&out.stdout)?;
        let kernel_ms = outcome["kernel_work_ms"]
            .as_f64()
            .context("bind --json has no kernel_work_ms")?;
        Ok((kernel_ms, wall_ms))
    }

    fn unbind_all(&self, agent: &Path) -> Result<()> {
        let out = Command::new(agent)
            .args(["unbind", "--all", "--bpffs"])
            .arg(&self.bpffs)
            .output()?;
        if !out.status.success() {
            bail!(
                "unbind failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.bpffs).status();
        for cgroup in &self.cgroups {
            let _ = fs::remove_dir(cgroup);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The mount point of a hierarchy, from the mount table.
fn mount_of(v2: bool) -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| {
            if v2 {
                f.get(2) == Some(&"cgroup2")
            } else {
                f.get(2) == Some(&"cgroup") && f[3].split(',').any(|o| o == "devices")
            }
        })
        .map(|f| PathBuf::from(f[1]))
        .with_context(|| {
            format!(
                "no {} hierarchy mounted",
                if v2 { "cgroup2" } else { "v1 devices" }
            )
        })
}

/// Mean ns of one `open()` of `node` by a process in `cgroup`.
fn open_cost(probe: &Path, cgroup: &Path, node: &Path) -> Result<(f64, String)> {
    let out = Command::new(probe)
        .arg("--join")
        .arg(cgroup.join("cgroup.procs"))
        .args(["--time", OPENS])
        .arg(node)
        .output()?;
    if !out.status.success() {
        bail!(
            "open-probe: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let r = &v[node.display().to_string()];
    Ok((
        r["ns_per_open"].as_f64().context("no ns_per_open")?,
        r["outcome"].as_str().unwrap_or("?").to_string(),
    ))
}

/// The policy program's own mean cost per run (bpf_stats), over the programs named
/// `nvbind_devices`.
fn program_ns_per_run() -> Option<f64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .ok()?;
    let progs: Value = serde_json::from_slice(&out.stdout).ok()?;
    let (mut ns, mut runs) = (0.0, 0.0);
    for p in progs.as_array()? {
        if p["name"] == "nvbind_devices" {
            ns += p["run_time_ns"].as_f64().unwrap_or(0.0);
            runs += p["run_cnt"].as_f64().unwrap_or(0.0);
        }
    }
    (runs > 0.0).then(|| ns / runs)
}

/// Per hierarchy: (kernel ms, command ms) of each bind, then of each replace.
type BindTimes = (String, Vec<(f64, f64)>, Vec<(f64, f64)>);

/// One case of the open() measurement: name, allowed-open ns, denied-open ns, program ns/run.
type OpenCase = (String, Vec<f64>, Vec<f64>, Vec<f64>);

pub fn bench(root: &Path, agent: &Path, probe: &Path, dir: &Path) -> Result<()> {
    let v2_mount = mount_of(true)?;
    let v1_mount = mount_of(false).ok();
    let mut lab = Lab::new(root, &dir.join("binding"))?;

    step(&format!(
        "binding: {BINDS} binds and replaces, cgroup v2 and v1"
    ));
    let mut times: Vec<BindTimes> = Vec::new();
    let mut hierarchies = vec![("cgroup v2 (eBPF program, pinned link)", v2_mount.clone())];
    if let Some(v1) = &v1_mount {
        hierarchies.push(("cgroup v1 (devices.allow/deny)", v1.clone()));
    }
    for (name, mount) in &hierarchies {
        let (mut binds, mut replaces) = (Vec::new(), Vec::new());
        for i in 0..BINDS {
            let cgroup = lab.cgroup(mount, &format!("nvbind-bench-time-{i}"))?;
            binds.push(lab.bind(agent, &cgroup, "1")?);
            replaces.push(lab.bind(agent, &cgroup, "0")?);
        }
        lab.unbind_all(agent)?;
        times.push((name.to_string(), binds, replaces));
    }

    step(&format!(
        "binding: open() of a device node with 0, 1 and {SIBLINGS} bound cgroups (3 rounds)"
    ));
    let stats_were = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let allowed = lab.node("dri/renderD128");
    let denied = lab.node("nvidia0");
    let subject = lab.cgroup(&v2_mount, "nvbind-bench-open")?;
    let siblings: Vec<PathBuf> = (1..SIBLINGS)
        .map(|i| lab.cgroup(&v2_mount, &format!("nvbind-bench-sibling-{i}")))
        .collect::<Result<_>>()?;
    let mut rows: Vec<OpenCase> = [
        "unbound cgroup".to_string(),
        "1 bound cgroup".into(),
        format!("{SIBLINGS} bound cgroups"),
    ]
    .into_iter()
    .map(|name| (name, vec![], vec![], vec![]))
    .collect();
    for _round in 0..3 {
        let (ns, outcome) = open_cost(probe, &subject, &allowed)?;
        if outcome != "ENXIO" {
            bail!("unbound: opening {} gave {outcome}", allowed.display());
        }
        rows[0].1.push(ns);
        rows[0].2.push(open_cost(probe, &subject, &denied)?.0);
        lab.bind(agent, &subject, "1")?;
        for (row, count) in [(1usize, 1usize), (2, SIBLINGS)] {
            if count > 1 {
                for sibling in &siblings {
                    lab.bind(agent, sibling, "1")?;
                }
            }
            let (ns, outcome) = open_cost(probe, &subject, &allowed)?;
            let (denied_ns, denied_outcome) = open_cost(probe, &subject, &denied)?;
            if outcome != "ENXIO" || denied_outcome != "EPERM" {
                bail!("bound: allowed gave {outcome}, denied gave {denied_outcome}");
            }
            rows[row].1.push(ns);
            rows[row].2.push(denied_ns);
            if let Some(ns_per_run) = program_ns_per_run() {
                rows[row].3.push(ns_per_run);
            }
        }
        lab.unbind_all(agent)?;
    }
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_were.trim());

    println!("\n### Device binding: time to bind and to replace (agent's kernel work: load, fill, attach, pin, detach the old), medians of {BINDS} cgroups\n");
    println!(
        "| hierarchy | bind ms | replace ms | goal | whole `bind` command ms (bind / replace) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, binds, replaces) in times {
        let kernel = |v: &[(f64, f64)]| median(v.iter().map(|t| t.0).collect());
        let wall = |v: &[(f64, f64)]| median(v.iter().map(|t| t.1).collect());
        println!(
            "| {name} | {:.2} | {:.2} | < 10 ms | {:.1} / {:.1} |",
            kernel(&binds),
            kernel(&replaces),
            wall(&binds),
            wall(&replaces)
        );
    }
    println!("\n### Device binding: cost of open() on a device node from a bound cgroup v2 (fixture node, no driver), medians of 3 rounds of {OPENS} opens\n");
    println!("| case | allowed open() ns (ENXIO) | denied open() ns (EPERM) | nvbind_devices ns/run | allowed ratio to 1 bound |");
    println!("|---|---:|---:|---:|---:|");
    let one = median(rows[1].1.clone());
    for (case, allowed, denied, prog) in rows {
        let a = median(allowed);
        let prog = if prog.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", median(prog))
        };
        println!(
            "| {case} | {a:.0} | {:.0} | {prog} | {:.3} |",
            median(denied),
            a / one
        );
    }
    Ok(())
}
