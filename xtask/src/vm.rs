//! `cargo xtask vm`: a small test VM with a real DRM display, for the probes this machine's kernel
//! cannot exercise (it has no DRM). The recipe is `../shared/DRM-VM.md`:
//!
//! - Debian's kernel (the `-unsigned` image `linux-image-amd64` points to), only unpacked;
//! - `vkms`, the virtual KMS driver Debian does not build, built out of tree from
//!   `linux-source-<major.minor>` against the matching `linux-headers`;
//! - a base initramfs: busybox as `/init`, the DRM module chain, `modetest` and `vbltest` with
//!   their libraries;
//! - booted under QEMU's TCG (this machine's KVM cannot run guests) with a second initramfs laid
//!   over the base at each boot (the agent and the test script), the serial console captured.
//!
//! Everything is cached under `target/vm/`, keyed by the kernel version: a re-run costs only the
//! boot.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    packages::debian_packages,
    util::{output_of, run, step},
};

/// Host packages the VM is built and booted with (the kernel headers are added by version).
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "libdrm-tests",
    "cpio",
    "kmod",
    "make",
    "gcc",
    "xz-utils",
];

/// The DRM clients put in the VM.
const DRM_CLIENTS: &[&str] = &["/usr/bin/modetest", "/usr/bin/vbltest"];

/// A built VM: its kernel and the base initramfs.
#[derive(Debug, Clone)]
pub struct Vm {
    pub kernel: PathBuf,
    pub base_initrd: PathBuf,
    /// The unpacked kernel package (its modules, for what a boot adds to the base).
    pub kroot: PathBuf,
    pub version: String,
}

/// Where the VM's artifacts live.
pub fn vm_dir(target: &Path) -> PathBuf {
    target.join("vm")
}

/// The kernel version `linux-image-amd64` points to, e.g. `6.1.0-56-amd64`.
fn kernel_version() -> Result<String> {
    let out = output_of(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))
        .context("run apt-cache")?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .map(str::to_string)
        .next()
        .with_context(|| {
            format!("`apt-cache depends linux-image-amd64` names no kernel image: {out}")
        })
}

/// Downloads one Debian package into `dir` (without installing it); returns the .deb's path.
fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let found = |dir: &Path| -> Result<Option<PathBuf>> {
        Ok(fs::read_dir(dir)?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            }))
    };
    if let Some(deb) = found(dir)? {
        return Ok(deb);
    }
    run(Command::new("apt-get")
        .args(["download", package])
        .current_dir(dir))
    .with_context(|| format!("download {package}"))?;
    found(dir)?.with_context(|| format!("apt-get download {package} left no .deb"))
}

/// Builds (or finds cached) the VM's kernel, modules and base initramfs.
pub fn prepare(target: &Path) -> Result<Vm> {
    step("vm: a test VM with a virtual DRM display (vkms)");
    let dir = vm_dir(target);
    fs::create_dir_all(&dir)?;
    debian_packages(VM_PACKAGES)?;
    // The package lists may predate the kernel packages on a fresh machine: refresh once.
    let version = match kernel_version() {
        Ok(v) => v,
        Err(_) => {
            run(Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            kernel_version()?
        }
    };
    let kernel = dir.join(format!("vmlinuz-{version}"));
    let base_initrd = dir.join(format!("base-{version}.cpio.gz"));
    let kroot = dir.join(format!("kernel-{version}"));
    let vm = Vm {
        kernel: kernel.clone(),
        base_initrd: base_initrd.clone(),
        kroot: kroot.clone(),
        version: version.clone(),
    };
    debian_packages(&[&format!("linux-headers-{version}")])?;
    if kernel.exists() && base_initrd.exists() {
        eprintln!(
            "    skip: VM for kernel {version} built ({})",
            base_initrd.display()
        );
        return Ok(vm);
    }

    let downloads = dir.join("downloads");
    let modules = kroot.join("lib/modules").join(&version);
    if !modules.join("modules.dep").exists() {
        let deb = download(&format!("linux-image-{version}-unsigned"), &downloads)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kroot))?;
    }
    let vkms = build_vkms(&dir, &downloads, &version)?;
    let extra = modules.join("extra");
    fs::create_dir_all(&extra)?;
    fs::copy(&vkms, extra.join("vkms.ko"))?;
    run(Command::new("depmod").arg("-b").arg(&kroot).arg(&version))?;
    let partial = partial_path(&kernel);
    fs::copy(kroot.join(format!("boot/vmlinuz-{version}")), &partial)
        .context("the kernel package has no vmlinuz")?;
    fs::rename(&partial, &kernel)?;
    build_base_initrd(&kroot, &version, &dir.join("base"), &base_initrd)?;
    Ok(vm)
}

/// Builds vkms.ko out of tree from Debian's kernel source; returns its path.
fn build_vkms(dir: &Path, downloads: &Path, version: &str) -> Result<PathBuf> {
    let out = dir.join(format!("vkms-{version}.ko"));
    if out.exists() {
        return Ok(out);
    }
    let series: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let series = series.split('-').next().unwrap_or(&series).to_string();
    let source_pkg = format!("linux-source-{series}");
    let deb = download(&source_pkg, downloads)?;
    // Keyed by the kernel version: a newer kernel package comes with a newer source package.
    let unpacked = dir.join(format!("source-deb-{version}"));
    if !unpacked.exists() {
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let tarball = unpacked.join(format!("usr/src/{source_pkg}.tar.xz"));
    let src = dir.join(format!("source-{version}"));
    let vkms_src = src.join(format!("{source_pkg}/drivers/gpu/drm/vkms"));
    if !vkms_src.join("Makefile").exists() {
        fs::create_dir_all(&src)?;
        run(Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .arg(format!("{source_pkg}/drivers/gpu/drm/vkms")))?;
    }
    run(Command::new("make")
        .arg("-C")
        .arg(format!("/usr/src/linux-headers-{version}"))
        .arg(format!("M={}", vkms_src.display()))
        .args(["CONFIG_DRM_VKMS=m", "modules"]))?;
    let partial = partial_path(&out);
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg(vkms_src.join("vkms.ko"))
        .arg("-o")
        .arg(&partial))?;
    fs::rename(&partial, &out)?;
    Ok(out)
}

/// The shared libraries `ldd` lists for `binary`, with the dynamic loader.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // "libx.so.1 => /lib/x/libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies `binary` (to `dest` inside the VM) and its libraries into `staging`.
pub fn stage_binary(binary: &Path, dest: &str, staging: &Path) -> Result<()> {
    let target = staging.join(dest.trim_start_matches('/'));
    fs::create_dir_all(target.parent().context("a destination needs a folder")?)?;
    fs::copy(binary, &target).with_context(|| format!("copy {}", binary.display()))?;
    for lib in libraries(binary)? {
        let to = staging.join(lib.strip_prefix("/").unwrap_or(&lib));
        if to.exists() {
            continue;
        }
        fs::create_dir_all(to.parent().context("a library has a folder")?)?;
        fs::copy(&lib, &to).with_context(|| format!("copy {}", lib.display()))?;
    }
    Ok(())
}

/// Where `path` is written before it is renamed into place.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Packs `staging` as a gzip'd newc cpio archive at `out`.
pub fn pack(staging: &Path, out: &Path) -> Result<()> {
    // Into a temporary file renamed when complete: an interrupted build never leaves a truncated
    // archive that a later run would take as built.
    let partial = partial_path(out);
    let file =
        fs::File::create(&partial).with_context(|| format!("create {}", partial.display()))?;
    let status = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; find . -print0 | cpio --null -o -H newc --quiet | gzip -1")
        .current_dir(staging)
        .stdout(file)
        .status()
        .context("run cpio")?;
    if !status.success() {
        let _ = fs::remove_file(&partial);
        bail!("packing {} failed ({status})", staging.display());
    }
    fs::rename(&partial, out).with_context(|| format!("rename to {}", out.display()))?;
    Ok(())
}

/// PID 1 of the VM: mounts, loads the DRM chain (vkms gives a 60 Hz virtual display), runs
/// `/test.sh` from the overlay initramfs, powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
for m in $(cat /modules/order); do insmod /modules/$m || echo "nvbind-vm: insmod $m failed"; done
echo "nvbind-vm: kernel $(uname -r), DRM cards: $(ls /dev/dri 2>/dev/null | tr '\n' ' ')"
if [ -x /test.sh ]; then /test.sh; echo "nvbind-vm: test.sh exited $?"; fi
echo "nvbind-vm: done"
poweroff -f
"#;

fn build_base_initrd(kroot: &Path, version: &str, staging: &Path, out: &Path) -> Result<()> {
    if staging.exists() {
        fs::remove_dir_all(staging)?;
    }
    for d in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "modules",
        "sys/kernel/tracing",
    ] {
        fs::create_dir_all(staging.join(d))?;
    }
    fs::copy("/bin/busybox", staging.join("bin/busybox")).context("copy busybox")?;
    let init = staging.join("init");
    fs::write(&init, INIT)?;
    run(Command::new("chmod").arg("755").arg(&init))?;

    let order = stage_module_chains(kroot, version, &["vkms"], &staging.join("modules"))?;
    if !order.iter().any(|m| m == "vkms.ko") {
        bail!("modprobe found no vkms in {}", kroot.display());
    }
    fs::write(staging.join("modules/order"), order.join("\n") + "\n")?;
    for client in DRM_CLIENTS {
        stage_binary(Path::new(client), client, staging)?;
    }
    pack(staging, out)
}

/// Copies into `dir` every module `modules` need, each once, in the load order `modprobe
/// --show-depends` resolves; returns their file names in that order.
fn stage_module_chains(
    kroot: &Path,
    version: &str,
    modules: &[&str],
    dir: &Path,
) -> Result<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    for module in modules {
        let deps = output_of(Command::new("modprobe").arg("-d").arg(kroot).args([
            "-S",
            version,
            "--show-depends",
            module,
        ]))
        .context("run modprobe --show-depends")?;
        for line in deps.lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = PathBuf::from(path.split_whitespace().next().unwrap_or(path));
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("a module path has a name")?
                .to_string();
            if !order.contains(&name) {
                fs::copy(&path, dir.join(&name))
                    .with_context(|| format!("copy {}", path.display()))?;
                order.push(name);
            }
        }
    }
    Ok(order)
}

/// Boots the VM with `overlay` (a cpio.gz laid over the base) and returns the serial console's
/// output. Fails if the VM does not power off within `limit`.
pub fn boot(vm: &Vm, overlay: &Path, limit: Duration, work: &Path) -> Result<String> {
    boot_with(vm, overlay, limit, work, &[])
}

/// As [`boot`], with more QEMU arguments (a shared folder).
fn boot_with(
    vm: &Vm,
    overlay: &Path,
    limit: Duration,
    work: &Path,
    extra: &[&str],
) -> Result<String> {
    let initrd = work.join("initrd.cpio.gz");
    // Concatenated archives: the kernel unpacks them in order, the overlay last.
    let mut bytes = fs::read(&vm.base_initrd)?;
    bytes.extend(fs::read(overlay)?);
    fs::write(&initrd, bytes)?;
    let out = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "2048",
            // One vCPU: with two, the guest froze in 3 of about 45 boots, both vCPUs looping
            // between the int3 handler and syscall_trace_enter (found with QEMU's monitor and
            // the guest's kallsyms) when the agent started and the kernel live-patched the
            // syscall tracepoints' static branches while the other vCPU ran through them: QEMU
            // 7.2's TCG and the kernel's int3 text patching across vCPUs. One vCPU has no other
            // CPU to race with.
            "-smp",
            "1",
        ])
        .arg("-kernel")
        .arg(&vm.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1",
            "-nographic",
            "-no-reboot",
            "-net",
            "none",
            "-vga",
            "none",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .context("run qemu-system-x86_64 (cargo xtask setup installs qemu-system-x86)")?;
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    if !out.status.success() {
        // The whole console, for whoever looks into it (the error shows its last lines).
        let kept = work.join("console-failed.txt");
        let _ = fs::write(&kept, &console);
        bail!(
            "the VM did not power off within {} s ({}; its console: {}): {}",
            limit.as_secs(),
            out.status,
            kept.display(),
            console
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(console)
}

/// The DRM checks run in the VM (`cargo xtask vm` and `cargo xtask test`): doctor; `modetest`
/// page-flipping on vkms's virtual display at 60 Hz, recorded; `vbltest` waiting for vblank
/// events, recorded; `drm-sequence` (tests/src/bin) asking for CRTC-sequence and late vblank
/// events, recorded; with the kernel's own trace of the delivered events as the reference. Each
/// result is printed between `==BEGIN name==` and `==END name==` lines for
/// `tests/tests/drm_vm.rs` to read from the console.
pub const DRM_TEST_SCRIPT: &str = r#"#!/bin/sh
A=/nvbind-agent
show() { echo "==BEGIN $1=="; cat "$2"; echo; echo "==END $1=="; }
# When each step began, in the guest's uptime: a slow or stuck step is seen in the console.
at() {
  t=$(cut -d' ' -f1 /proc/uptime)
  echo "$t $1" > /tmp/step
  echo "nvbind-vm: $t s: $1"
}
# A step that runs for over 60 s is stuck (each takes seconds): then, and every 60 s after, the
# console gets every task's state and wait channel, the kernel's stacks of the blocked ones
# (sysrq w) and the kernel log's tail, so a hang is diagnosed where it happens instead of ending
# as a silent VM timeout.
watchdog() {
  while sleep 10; do
    read started name < /tmp/step
    now=$(cut -d' ' -f1 /proc/uptime)
    ran=$(( ${now%.*} - ${started%.*} ))
    [ $ran -lt 60 ] && continue
    echo "nvbind-vm: step $name has run for $ran s; every task (pid comm state wchan):"
    for p in /proc/[0-9]*; do
      echo "  ${p#/proc/} $(cat $p/comm 2>/dev/null) $(cut -d' ' -f3 $p/stat 2>/dev/null) $(cat $p/wchan 2>/dev/null)"
    done
    echo 8 > /proc/sys/kernel/printk
    echo w > /proc/sysrq-trigger
    sleep 1
    dmesg | tail -150
    echo "$now $name" > /tmp/step
  done
}
# Waits up to $2 tenths of a second for pid $1 to end; if it does not, writes where its threads
# are (a hang is then diagnosed, not a VM timeout) and kills it.
reap() {
  i=0
  while kill -0 $1 2>/dev/null && [ $i -lt $2 ]; do sleep 0.1; i=$((i+1)); done
  if kill -0 $1 2>/dev/null; then
    echo "nvbind-vm: pid $1 ($(cat /proc/$1/comm)) still runs after $(($2 / 10)) s; its threads:"
    for t in /proc/$1/task/*; do echo "  $t $(cat $t/comm) $(cat $t/wchan) $(grep State $t/status)"; done
    kill -KILL $1
  fi
  wait $1
}
at doctor
watchdog &
$A doctor > /tmp/doctor.txt 2>&1; echo "exit $?" >> /tmp/doctor.txt
show doctor /tmp/doctor.txt
CONN=$(modetest -M vkms -c | awk '$3 == "connected" { print $1; exit }')
CRTC=$(modetest -M vkms -p | awk '/^CRTCs:/ { getline; getline; print $1; exit }')
echo "nvbind-vm: connector $CONN, crtc $CRTC"
T=/sys/kernel/tracing
echo 1 > $T/events/drm/drm_vblank_event_delivered/enable
echo 1 > $T/events/drm/drm_vblank_event/enable
echo > $T/trace
at flip
$A record --out /tmp/flip.json -- sh -c "sleep 4 | modetest -M vkms -s $CONN@$CRTC:1024x768 -v > /tmp/modetest.txt 2>&1" > /tmp/flip.log 2>&1
echo "exit $?" >> /tmp/flip.log
echo 0 > $T/tracing_on
grep -c 'drm_vblank_event_delivered:' $T/trace > /tmp/kernel.txt
grep 'drm_vblank_event_delivered:' $T/trace | grep -vc 'file=0000000000000000\|file=(null)\|file=00000000 ' >> /tmp/kernel.txt
grep -c 'drm_vblank_event:' $T/trace >> /tmp/kernel.txt
grep 'drm_vblank_event_delivered:' $T/trace | head -3 >> /tmp/kernel.txt
grep 'drm_vblank_event_delivered:' $T/trace | grep -v 'file=0000000000000000\|file=(null)\|file=00000000 ' > /tmp/flips.txt
show flip-log /tmp/flip.log
show modetest /tmp/modetest.txt
show kernel-trace /tmp/kernel.txt
show flip-trace /tmp/flips.txt
show flip /tmp/flip.json
# A mode set for the vblank and sequence checks, held until the VM powers off (`poweroff -f`
# does not tear it down): no mode teardown is left in the script after the flip check.
(sleep 1000000 | modetest -M vkms -s $CONN@$CRTC:1024x768 > /dev/null 2>&1) &
sleep 1
at vbl
$A record --duration 2 --out /tmp/vbl.json -- vbltest -M vkms > /tmp/vbl.log 2>&1
echo "exit $?" >> /tmp/vbl.log
show vbl-log /tmp/vbl.log
show vbl /tmp/vbl.json
at seq
$A record --out /tmp/seq.json -- /drm-sequence /dev/dri/card0 $CRTC 60 > /tmp/seq.log 2>&1
echo "exit $?" >> /tmp/seq.log
show seq-log /tmp/seq.log
show seq /tmp/seq.json
at daemon
printf '[api]\nlisten = ""\nsocket = ""\n[reports]\ndir = "/tmp/reports"\ngroup = ""\n' > /tmp/agent.toml
RUST_LOG=info $A --config /tmp/agent.toml > /tmp/daemon.log 2>&1 &
D=$!
i=0
while ! grep -q 'tracking every process' /tmp/daemon.log && kill -0 $D 2>/dev/null && [ $i -lt 600 ]; do
  sleep 0.2; i=$((i+1))
done
kill -TERM $D
reap $D 600 >> /tmp/daemon.log
echo "exit $?" >> /tmp/daemon.log
show daemon /tmp/daemon.log
at end
"#;

/// The host's graphics libraries the agent hooks, by the names it looks for them under.
const GRAPHICS_LIBRARIES: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/libEGL.so.1",
    "/usr/lib/x86_64-linux-gnu/libGLX.so.0",
    "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
];

/// Lays the host's graphics libraries into the guest where a desktop has them (the file and its
/// soname link). Nothing in the guest calls them: they are there to be hooked, so that the
/// present programs are loaded, and checked by the guest kernel's verifier, as on a desktop.
fn stage_graphics_libraries(staging: &Path) -> Result<()> {
    for soname in GRAPHICS_LIBRARIES {
        let real = fs::canonicalize(soname).with_context(|| {
            format!("{soname} (cargo xtask setup installs it) is needed in the test VM")
        })?;
        let file = staging.join(real.strip_prefix("/").unwrap_or(&real));
        fs::create_dir_all(file.parent().context("a library has a folder")?)?;
        fs::copy(&real, &file).with_context(|| format!("copy {}", real.display()))?;
        let link = staging.join(soname.trim_start_matches('/'));
        if link != file {
            std::os::unix::fs::symlink(real.file_name().context("a library has a name")?, &link)
                .with_context(|| format!("link {}", link.display()))?;
        }
    }
    Ok(())
}

/// Boots the VM with `agent` (stripped of debug info) as `/nvbind-agent`, each of `clients` as
/// `/` + its file name, and `script` as `/test.sh`; returns the console.
pub fn run_script(
    target: &Path,
    agent: &Path,
    clients: &[PathBuf],
    script: &str,
) -> Result<String> {
    let vm = prepare(target)?;
    let work = vm_dir(target).join("run");
    let staging = work.join("overlay");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    // A debug agent is ~150 MB, most of it DWARF: the VM needs none of it.
    let stripped = work.join("nvbind-agent");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(agent)
        .arg(&stripped))?;
    stage_binary(&stripped, "/nvbind-agent", &staging)?;
    for client in clients {
        let name = client
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", client.display()))?;
        stage_binary(client, &format!("/{name}"), &staging)?;
    }
    stage_graphics_libraries(&staging)?;
    let test = staging.join("test.sh");
    fs::write(&test, script)?;
    run(Command::new("chmod").arg("755").arg(&test))?;
    let overlay = work.join("overlay.cpio.gz");
    pack(&staging, &overlay)?;
    step("vm: boot (QEMU, TCG)");
    let console = boot(&vm, &overlay, Duration::from_secs(300), &work)?;
    fs::write(work.join("console.txt"), &console)?;
    Ok(console)
}

/// What the host-root VM's default script runs from the host: Weston and its demo clients.
pub const DESKTOP_PACKAGES: &[&str] = &["weston", "libwayland-egl1", "vulkan-tools"];

/// The modules that mount the host's root in the guest (virtio-9p), in load order.
const HOST_ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// The host's root shared with the guest, read-only (`-virtfs`; the guest mounts tag
/// `hostroot`).
const HOST_ROOT_SHARE: &str =
    "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap";

/// Runs in the guest before the desktop script: the host's root over virtio-9p at /host with
/// the guest's /dev, /proc and /sys bound in and fresh tmpfs for what is written (/tmp, /run,
/// /var/tmp), the agent copied in, then `/desktop.sh` chrooted there: a real graphics stack
/// (the host's Weston, Mesa, Wayland clients) on the guest kernel's vkms display.
const HOST_ROOT_WRAPPER: &str = r#"#!/bin/sh
for m in $(cat /modules/host-root-order); do
  insmod /modules/$m 2>/dev/null || echo "nvbind-vm: insmod $m failed"
done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host || {
  echo "nvbind-vm: cannot mount the host's root"; exit 1; }
for d in dev proc sys; do mount --rbind /$d /host/$d; done
for d in tmp run var/tmp; do mount -t tmpfs tmpfs /host/$d; done
cp /nvbind-agent /host/tmp/nvbind-agent
cp /desktop.sh /host/tmp/desktop.sh
chroot /host /bin/sh /tmp/desktop.sh
echo "nvbind-vm: desktop.sh exited $?"
"#;

/// What `cargo xtask test` runs in the host-root VM (`@CLIENT@`: the path of this build's
/// `wl-feedback`, the same in the guest's chroot): Weston on vkms (DRM backend, pixman), and
/// one recording of `wl-feedback` (a Wayland client presenting through EGL, with the
/// compositor's `wp_presentation` feedback on every frame) as a vsynced game, a game faster than
/// the display and one slower, then through Vulkan (lavapipe, Mesa's Wayland WSI), then
/// `vkcube-wayland` (no feedback);
/// then the daemon beside Weston. Prints the clients' feedback, the report's display sections
/// and per frame what the frames CSV and the PresentMon export say, between `==BEGIN name==` /
/// `==END name==` lines for `tests/tests/compositor_vm.rs`.
pub const COMPOSITOR_TEST_SCRIPT: &str = r#"#!/bin/sh
export XDG_RUNTIME_DIR=/run/xdg
mkdir -p -m 0700 $XDG_RUNTIME_DIR
ip link set lo up
A=/tmp/nvbind-agent
C=@CLIENT@
weston --backend=drm-backend.so --tty=1 --use-pixman --continue-without-input --idle-time=0 \
  --log=/tmp/weston.log &
i=0
while [ ! -S $XDG_RUNTIME_DIR/wayland-1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
export WAYLAND_DISPLAY=wayland-1
echo "==BEGIN weston=="; ls $XDG_RUNTIME_DIR; pgrep -x weston; echo "==END weston=="
section() { echo "==BEGIN $1=="; cat "$2"; echo; echo "==END $1=="; }
at() { echo "nvbind-vm: $(cut -d' ' -f1 /proc/uptime) s: $*"; }
at "weston up"
# One recording of the clients one after the other (an agent's start is slow under TCG).
cat > /tmp/clients.sh <<CLIENTS
$C --frames 180 --swap-interval 1 --out /tmp/vsync-truth.json
$C --frames 300 --swap-interval 0 --out /tmp/fast-truth.json
$C --frames 80 --swap-interval 1 --frame-ms 30 --out /tmp/slow-truth.json
$C --api vulkan --frames 120 --swap-interval 1 --out /tmp/vulkan-truth.json
vkcube-wayland --c 120 > /tmp/vkcube.log 2>&1
CLIENTS
at "recording"
$A record --out /tmp/r.json --frames-csv /tmp/frames.csv --presentmon-csv /tmp/pm.csv \
  -- sh /tmp/clients.sh > /tmp/record.log 2>&1
echo "nvbind-vm: record exited $?"; tail -5 /tmp/record.log
for n in vsync fast slow vulkan; do section $n-truth /tmp/$n-truth.json; done
echo "==BEGIN vkcube-log=="; head -c 2000 /tmp/vkcube.log; echo "==END vkcube-log=="
# Per process that presented: the report's display section, and per frame (present, displayed,
# display time, latency) from the frames CSV and the PresentMon export's display columns.
echo "==BEGIN agent=="
python3 - <<'PY'
import csv, glob, json
r = json.load(open("/tmp/r.json"))
rows = list(csv.DictReader(open("/tmp/frames.csv")))
pm = {}
for path in glob.glob("/tmp/pm*.csv"):
    for x in csv.DictReader(open(path)):
        pm.setdefault(x["ProcessID"], []).append(
            [x["Dropped"], x["msUntilDisplayed"], x["msBetweenDisplayChange"]])
out = []
for p in r["processes"]:
    if p["frames"]["count"] == 0:
        continue
    pid = str(p["pid"])
    out.append({
        "pid": p["pid"], "name": p["name"], "frames": p["frames"]["count"],
        "source": p["frames"]["source"], "display": p["frames"].get("display"),
        "rows": [[int(x["present_ns"]), x["displayed"], x["display_ns"],
                  x["present_to_display_ms"]] for x in rows if x["pid"] == pid],
        "presentmon": pm.get(pid, []),
    })
drm = {k: v for k, v in r["capture"].get("drm", {}).items() if k != "crtcs"}
print(json.dumps({"processes": out, "drm": drm}))
PY
echo "==END agent=="
# The daemon beside the compositor: its API and /metrics while the client presents.
at "daemon"
$A --listen 127.0.0.1:9191 --socket /run/nvbind-vm.sock --reports-dir /tmp/reports \
  > /tmp/daemon.log 2>&1 &
D=$!
i=0
until curl -sf http://127.0.0.1:9191/api/processes > /dev/null || [ $i -ge 150 ]; do
  sleep 0.2; i=$((i+1)); done
at "daemon up"
$C --frames 300 --swap-interval 1 --out /tmp/daemon-truth.json > /tmp/daemon-client.log 2>&1 &
W=$!
# Until the daemon has counted 30 frames on screen (or 60 s).
i=0
until curl -s http://127.0.0.1:9191/api/processes | python3 -c '
import json, sys
p = json.load(sys.stdin)["processes"]
sys.exit(0 if any((x.get("display") or {}).get("displayed_total", 0) >= 30 for x in p) else 1)
' 2>/dev/null || [ $i -ge 60 ]; do sleep 1; i=$((i+1)); done
echo "==BEGIN daemon-api=="; curl -s http://127.0.0.1:9191/api/processes; echo; echo "==END daemon-api=="
echo "==BEGIN daemon-metrics=="
curl -s http://127.0.0.1:9191/metrics | grep -E '^nvbind_(present_to_display|frames_displayed|frames_dropped)'
echo "==END daemon-metrics=="
wait $W
kill $D; wait $D
at "daemon stopped"
echo "==BEGIN daemon-log=="; tail -5 /tmp/daemon.log; echo "==END daemon-log=="
echo "==BEGIN weston-log=="; tail -20 /tmp/weston.log; echo "==END weston-log=="
kill %1 2>/dev/null || true
"#;

/// [`COMPOSITOR_TEST_SCRIPT`] with `client` as the `wl-feedback` it runs (a path the guest's
/// chroot of the host's root has too).
pub fn compositor_script(client: &Path) -> Result<String> {
    let client = client
        .to_str()
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_graphic() && ch != '\''))
        .with_context(|| format!("{} is not a plain path", client.display()))?;
    Ok(COMPOSITOR_TEST_SCRIPT.replace("@CLIENT@", client))
}

/// Boots the VM with the host's root shared read-only and runs `script` chrooted into it
/// (see [`HOST_ROOT_WRAPPER`]), with `agent` as `/tmp/nvbind-agent`; returns the console.
pub fn run_host_root_script(target: &Path, agent: &Path, script: &str) -> Result<String> {
    let vm = prepare(target)?;
    let work = vm_dir(target).join("run-host-root");
    let staging = work.join("overlay");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(staging.join("modules"))?;
    let order = stage_module_chains(
        &vm.kroot,
        &vm.version,
        HOST_ROOT_MODULES,
        &staging.join("modules"),
    )?;
    fs::write(
        staging.join("modules/host-root-order"),
        order.join("\n") + "\n",
    )?;
    let stripped = work.join("nvbind-agent");
    fs::create_dir_all(&work)?;
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(agent)
        .arg(&stripped))?;
    fs::copy(&stripped, staging.join("nvbind-agent"))?;
    for (name, text) in [("test.sh", HOST_ROOT_WRAPPER), ("desktop.sh", script)] {
        let path = staging.join(name);
        fs::write(&path, text)?;
        run(Command::new("chmod").arg("755").arg(&path))?;
    }
    let overlay = work.join("overlay.cpio.gz");
    pack(&staging, &overlay)?;
    step("vm: boot with the host's root (QEMU, TCG)");
    let console = boot_with(
        &vm,
        &overlay,
        Duration::from_secs(600),
        &work,
        &["-virtfs", HOST_ROOT_SHARE],
    )?;
    fs::write(work.join("console.txt"), &console)?;
    Ok(console)
}
