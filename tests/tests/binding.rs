//! cgroup-scoped GPU binding, for real: fixture device nodes made with `mknod` with the real
//! majors (195 NVIDIA, 226 DRM, kfd) stand in for the GPUs, fresh cgroups on this machine's
//! cgroup v2 and v1 devices hierarchies are bound, and a helper process inside each cgroup opens
//! the nodes. The kernel answers: `ENXIO` (allowed, no driver behind the node) or `EPERM`
//! (denied by the policy). Each test mounts its own bpffs instance for the pins.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use nvbind_tests::{
    agent, agent_bin, assert_one_line_error, attach_device_program_like_runc, mount_point,
    require_root, stderr, Bpffs, FixtureHost, TestCgroup, Tree,
};

/// The fixture's nodes: GPU 0 is the NVIDIA card, GPU 1 (0000:0c:00.0) the AMD one.
struct Nodes {
    nvidia: Vec<PathBuf>,
    amd: Vec<PathBuf>,
    safe: Vec<PathBuf>,
}

impl Nodes {
    fn of(host: &FixtureHost) -> Nodes {
        Nodes {
            nvidia: [
                "nvidia0",
                "nvidiactl",
                "nvidia-uvm",
                "dri/card1",
                "dri/renderD129",
            ]
            .iter()
            .map(|n| host.path(&format!("dev/{n}")))
            .collect(),
            amd: ["dri/card0", "dri/renderD128", "kfd"]
                .iter()
                .map(|n| host.path(&format!("dev/{n}")))
                .collect(),
            safe: ["/dev/null", "/dev/zero", "/dev/urandom"]
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }

    fn all(&self) -> Vec<PathBuf> {
        [&self.nvidia, &self.amd, &self.safe]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

fn outcome<'a>(seen: &'a BTreeMap<String, String>, node: &Path) -> &'a str {
    seen.get(&node.display().to_string())
        .map(String::as_str)
        .unwrap_or("missing")
}

/// Every node in `nodes` gave `want`.
fn assert_all(seen: &BTreeMap<String, String>, nodes: &[PathBuf], want: &str, context: &str) {
    for node in nodes {
        assert_eq!(
            outcome(seen, node),
            want,
            "{context}: {} should give {want}; all: {seen:?}",
            node.display()
        );
    }
}

fn agent_args(base: &[&str], host: &FixtureHost, bpffs: &Bpffs) -> Vec<String> {
    let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    args.extend(["--bpffs".to_string(), bpffs.path()]);
    if matches!(base.first(), Some(&"bind")) {
        args.extend(host.root_args());
    }
    args
}

fn run(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    agent(&refs)
}

fn run_ok(args: &[String]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "nvbind-agent {args:?} failed: {}",
        stderr(&out)
    );
    out
}

/// The bindings a fresh agent lists.
fn listed(bpffs: &Bpffs) -> Vec<serde_json::Value> {
    let out = run_ok(&[
        "bindings".into(),
        "--json".into(),
        "--bpffs".into(),
        bpffs.path(),
    ]);
    serde_json::from_slice(&out.stdout).expect("bindings --json")
}

fn bind(cgroup: &TestCgroup, gpu: &str, host: &FixtureHost, bpffs: &Bpffs) -> Output {
    run(&agent_args(
        &["bind", "--cgroup", &cgroup.arg(), "--gpu", gpu, "--json"],
        host,
        bpffs,
    ))
}

/// Bind, enforce, replace, outlive the agent, list from a new agent, unbind: on one hierarchy.
fn bind_replace_list_unbind(tree: Tree) {
    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let nodes = Nodes::of(&host);
    let bpffs = Bpffs::mount();
    let cgroup = TestCgroup::new(tree, "bind");
    let neighbour = TestCgroup::new(tree, "neighbour");

    // Before: every node is allowed (ENXIO: no driver here), so any EPERM later is the policy.
    let before = cgroup.probe(&nodes.all());
    assert_all(
        &before,
        &[nodes.nvidia.clone(), nodes.amd.clone()].concat(),
        "ENXIO",
        "unbound",
    );
    assert_all(&before, &nodes.safe, "ok", "unbound");

    // The AMD GPU, by PCI address without its domain.
    let out = bind(&cgroup, "0c:00.0", &host, &bpffs);
    assert!(out.status.success(), "bind: {}", stderr(&out));
    let outcome_json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(outcome_json["binding"]["gpus"][0]["index"], 1);
    assert!(outcome_json["replaced"].is_null());
    // The agent has exited: whatever holds the policy now is the kernel and bpffs.
    let bound = cgroup.probe(&nodes.all());
    assert_all(&bound, &nodes.amd, "ENXIO", "bound to the AMD GPU");
    assert_all(&bound, &nodes.nvidia, "EPERM", "bound to the AMD GPU");
    assert_all(&bound, &nodes.safe, "ok", "bound to the AMD GPU");
    // Scoped: a sibling cgroup is untouched.
    assert_all(
        &neighbour.probe(&nodes.nvidia),
        &nodes.nvidia,
        "ENXIO",
        "sibling cgroup",
    );

    // Replace with the NVIDIA GPU, by index.
    let out = bind(&cgroup, "0", &host, &bpffs);
    assert!(out.status.success(), "rebind: {}", stderr(&out));
    let replaced: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(replaced["replaced"]["gpus"][0]["index"], 1);
    let swapped = cgroup.probe(&nodes.all());
    assert_all(&swapped, &nodes.nvidia, "ENXIO", "rebound to NVIDIA");
    assert_all(&swapped, &nodes.amd, "EPERM", "rebound to NVIDIA");
    assert_all(&swapped, &nodes.safe, "ok", "rebound to NVIDIA");

    // A new agent lists it, checked against the kernel.
    let list = listed(&bpffs);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["cgroup"], cgroup.arg());
    assert_eq!(list[0]["state"], "enforced");
    assert_eq!(list[0]["gpus"][0]["pci_address"], "0000:01:00.0");
    assert_eq!(
        list[0]["hierarchy"],
        match tree {
            Tree::V1 => "v1",
            Tree::V2 => "v2",
        }
    );
    if tree == Tree::V2 {
        let id = list[0]["program_id"].as_u64().expect("a program id");
        let shown = Command::new("bpftool")
            .args(["cgroup", "show", &cgroup.arg()])
            .output()
            .expect("run bpftool");
        let shown = String::from_utf8_lossy(&shown.stdout);
        assert!(
            shown.contains(&id.to_string()) && shown.contains("nvbind_devices"),
            "bpftool shows program {id} on the cgroup: {shown}"
        );
    }

    // And removes it.
    let out = run_ok(&agent_args(
        &["unbind", "--cgroup", &cgroup.arg()],
        &host,
        &bpffs,
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unbound"));
    let after = cgroup.probe(&nodes.all());
    assert_all(
        &after,
        &[nodes.nvidia.clone(), nodes.amd.clone()].concat(),
        "ENXIO",
        "unbound",
    );
    assert!(listed(&bpffs).is_empty());
}

#[test]
fn cgroup_v2_binding_is_enforced_replaced_listed_and_removed() {
    bind_replace_list_unbind(Tree::V2);
}

#[test]
fn cgroup_v1_binding_is_enforced_replaced_listed_and_removed() {
    bind_replace_list_unbind(Tree::V1);
}

/// Agents killed per test, at moments spread from at once to past the time a whole bind takes
/// on this machine in this run (measured first), so the kills land before, during and after its
/// kernel work however fast or loaded the machine is.
const KILL_ROUNDS: u32 = 24;

/// Runs `nvbind-agent ARGS` as the kill rounds do (spawn returns once it has exec'd); kills it
/// with SIGKILL after `delay` unless `delay` is `None`. Its exit status and how long it lived.
fn bind_killed_after(
    args: &[String],
    delay: Option<Duration>,
) -> (std::process::ExitStatus, Duration) {
    let mut child = Command::new(agent_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn nvbind-agent bind");
    let started = std::time::Instant::now();
    if let Some(delay) = delay {
        std::thread::sleep(delay);
        // SIGKILL: no clean-up code of the agent runs. (A child that already exited is not
        // signalled: the status says which happened.)
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    (status, started.elapsed())
}

/// `kill -9` of agents in the middle of replacing a binding, at spread-out moments: afterwards
/// the cgroup never allows both GPUs (it holds the old policy, the new one, or on v2 both at
/// once), a new agent lists the binding, binding again settles it, and unbind removes it.
fn killed_agents_never_leave_the_cgroup_unprotected(tree: Tree) {
    use std::os::unix::process::ExitStatusExt;

    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let nodes = Nodes::of(&host);
    let bpffs = Bpffs::mount();
    let cgroup = TestCgroup::new(tree, "kill");
    let nvidia0 = host.path("dev/nvidia0");
    let amd_render = host.path("dev/dri/renderD128");
    let replace_with = |gpu: &str| {
        agent_args(
            &["bind", "--cgroup", &cgroup.arg(), "--gpu", gpu],
            &host,
            &bpffs,
        )
    };

    let out = bind(&cgroup, "1", &host, &bpffs);
    assert!(out.status.success(), "bind: {}", stderr(&out));
    // How long a whole replacement takes here, now: the kills are spread over that.
    let mut whole = Duration::ZERO;
    for gpu in ["0", "1"] {
        let (status, took) = bind_killed_after(&replace_with(gpu), None);
        assert!(status.success(), "replacing with GPU {gpu}: {status}");
        whole = whole.max(took);
    }
    let mut killed_mid_way = 0;
    for round in 0..KILL_ROUNDS {
        let gpu = if round % 2 == 0 { "0" } else { "1" };
        let delay = whole.mul_f64(1.25 * f64::from(round) / f64::from(KILL_ROUNDS - 1));
        let (status, _) = bind_killed_after(&replace_with(gpu), Some(delay));
        // Killed, or done: an agent that finished did its job.
        match status.signal() {
            Some(libc::SIGKILL) => killed_mid_way += 1,
            _ => assert!(
                status.success(),
                "round {round}: an agent that was not killed failed: {status}"
            ),
        }
        let mut probed = vec![nvidia0.clone(), amd_render.clone()];
        probed.extend(nodes.safe.iter().cloned());
        let seen = cgroup.probe(&probed);
        assert!(
            outcome(&seen, &nvidia0) == "EPERM" || outcome(&seen, &amd_render) == "EPERM",
            "round {round}: after kill -9 the cgroup must still deny at least one GPU: {seen:?}"
        );
        // Both policies allow the safe devices, so no moment between them denies them.
        assert_all(&seen, &nodes.safe, "ok", &format!("round {round}"));
        let list = listed(&bpffs);
        assert_eq!(list.len(), 1, "round {round}: {list:?}");
        let state = list[0]["state"].as_str().unwrap_or_default().to_string();
        assert!(
            ["enforced", "replacing"].contains(&state.as_str()),
            "round {round}: state {state}"
        );
    }
    // The first round kills an agent that has only just exec'd: some kill always lands.
    assert!(
        killed_mid_way > 0,
        "no agent was killed before it finished: the test did not test anything"
    );
    eprintln!(
        "{killed_mid_way} of {KILL_ROUNDS} agents were killed before finishing (a whole bind \
         took {whole:?})"
    );

    // Binding again settles whatever was left.
    let out = bind(&cgroup, "1", &host, &bpffs);
    assert!(out.status.success(), "settling bind: {}", stderr(&out));
    let list = listed(&bpffs);
    assert_eq!(list[0]["state"], "enforced", "{list:?}");
    let pinned = PathBuf::from(list[0]["pinned_at"].as_str().expect("pinned_at"));
    let generations = std::fs::read_dir(pinned.parent().expect("entry dir"))
        .expect("read entry")
        .count();
    assert_eq!(generations, 1, "old generations are cleared");
    let settled = cgroup.probe(&nodes.all());
    assert_all(&settled, &nodes.amd, "ENXIO", "settled");
    assert_all(&settled, &nodes.nvidia, "EPERM", "settled");
    assert_all(&settled, &nodes.safe, "ok", "settled");

    run_ok(&agent_args(&["unbind", "--all"], &host, &bpffs));
    let after = cgroup.probe(&[nvidia0.clone(), amd_render.clone()]);
    assert_all(&after, &[nvidia0, amd_render], "ENXIO", "unbound");
}

#[test]
fn cgroup_v2_policy_survives_kill_9_at_any_point() {
    killed_agents_never_leave_the_cgroup_unprotected(Tree::V2);
}

#[test]
fn cgroup_v1_policy_survives_kill_9_at_any_point() {
    killed_agents_never_leave_the_cgroup_unprotected(Tree::V1);
}

#[test]
fn bad_input_is_refused_and_the_previous_policy_stays() {
    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let nodes = Nodes::of(&host);
    let bpffs = Bpffs::mount();
    let cgroup = TestCgroup::new(Tree::V2, "bad");
    let out = bind(&cgroup, "1", &host, &bpffs);
    assert!(out.status.success(), "bind: {}", stderr(&out));
    let check_intact = |context: &str| {
        let seen = cgroup.probe(&nodes.all());
        assert_all(&seen, &nodes.amd, "ENXIO", context);
        assert_all(&seen, &nodes.nvidia, "EPERM", context);
        assert_all(&seen, &nodes.safe, "ok", context);
    };
    let roots = host.root_args();
    let with_roots = |mut args: Vec<String>| {
        args.extend(roots.iter().cloned());
        args
    };
    let cg = cgroup.arg();
    // `bind FLAG TARGET --gpu GPU` on this test's bpffs and fixture host.
    let bind_cmd = |flag: &str, target: &str, gpu: &str| {
        with_roots(
            ["bind", flag, target, "--gpu", gpu, "--bpffs", &bpffs.path()]
                .map(String::from)
                .to_vec(),
        )
    };

    // A GPU that does not exist.
    for selector in [
        "7",
        "GPU-00000000-0000-0000-0000-000000000000",
        "0000:99:00.0",
    ] {
        let out = run(&bind_cmd("--cgroup", &cg, selector));
        assert_one_line_error(&out, &["no GPU matches", selector, "0000:0c:00.0"]);
        check_intact(&format!("after --gpu {selector}"));
    }

    // bpffs not mounted where it is asked for.
    let not_bpf = tempfile::tempdir().expect("tempdir");
    let out = run(&with_roots(vec![
        "bind".into(),
        "--cgroup".into(),
        cg.clone(),
        "--gpu".into(),
        "0".into(),
        "--bpffs".into(),
        not_bpf.path().display().to_string(),
    ]));
    assert_one_line_error(&out, &["not a mounted BPF filesystem", "mount -t bpf"]);
    check_intact("after a bpffs that is not one");

    // Paths that are not cgroups, and cgroups that cannot be bound.
    let v2_root = mount_point(Tree::V2).display().to_string();
    let procs_file = cgroup.path.join("cgroup.procs").display().to_string();
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("/tmp".into(), vec!["/tmp is not a cgroup"]),
        ("/nonexistent/cg".into(), vec!["no such directory"]),
        (procs_file, vec!["not a cgroup directory"]),
        (v2_root, vec!["refusing to bind the root cgroup"]),
    ];
    for (path, expect) in cases {
        let out = run(&bind_cmd("--cgroup", &path, "0"));
        assert_one_line_error(&out, &expect);
    }
    // A v1 hierarchy without the devices controller, where this host has one.
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    if let Some(memory) = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup") && f[3].split(',').any(|o| o == "memory"))
        .map(|f| PathBuf::from(f[1]))
    {
        let child = memory.join(format!("nvbind-test-mem-{}", std::process::id()));
        std::fs::create_dir_all(&child).expect("mkdir memory cgroup");
        let out = run(&with_roots(vec![
            "bind".into(),
            "--cgroup".into(),
            child.display().to_string(),
            "--gpu".into(),
            "0".into(),
            "--dry-run".into(),
        ]));
        let _ = std::fs::remove_dir(&child);
        assert_one_line_error(&out, &["cannot restrict devices", "devices"]);
    } else {
        eprintln!("NOTE: no v1 memory hierarchy here; the non-devices v1 case is not exercised");
    }

    // A pid that does not exist.
    let out = run(&bind_cmd("--pid", "3999999", "0"));
    assert_one_line_error(&out, &["no process with pid 3999999"]);

    // Not root.
    std::fs::set_permissions(
        host.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let mut as_nobody = Command::new("setpriv");
    as_nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .args(with_roots(vec![
            "bind".into(),
            "--cgroup".into(),
            cg.clone(),
            "--gpu".into(),
            "0".into(),
            "--bpffs".into(),
            bpffs.path(),
        ]));
    let out = as_nobody.output().expect("run setpriv");
    assert_one_line_error(&out, &["needs root", "sudo"]);
    check_intact("after a non-root attempt");

    // A cgroup whose device policy another tool set (here: this test, doing what runc and
    // systemd do): refused, and that policy stays.
    let other = TestCgroup::new(Tree::V2, "foreign");
    attach_device_program_like_runc(&other.path, false);
    assert_all(
        &other.probe(&nodes.safe),
        &nodes.safe,
        "EPERM",
        "foreign policy",
    );
    let out = run(&bind_cmd("--cgroup", &other.arg(), "0"));
    assert_one_line_error(
        &out,
        &["already has a device policy", "did not set", "other_tool"],
    );
    assert_all(
        &other.probe(&nodes.safe),
        &nodes.safe,
        "EPERM",
        "foreign policy kept",
    );

    // The same on cgroup v1: a devices list someone else wrote stays as it was.
    let v1 = TestCgroup::new(Tree::V1, "foreign");
    for (file, line) in [("devices.deny", "a"), ("devices.allow", "c 1:3 rw")] {
        std::fs::write(v1.path.join(file), line).expect("write a v1 devices rule");
    }
    let list_before = std::fs::read_to_string(v1.path.join("devices.list")).expect("list");
    let out = run(&bind_cmd("--cgroup", &v1.arg(), "0"));
    assert_one_line_error(&out, &["already has a device policy", "devices.list"]);
    let list_after = std::fs::read_to_string(v1.path.join("devices.list")).expect("list");
    assert_eq!(list_before, list_after, "the foreign v1 list is untouched");

    // Unbinding what is not bound.
    let out = run(&[
        "unbind".into(),
        "--cgroup".into(),
        other.arg(),
        "--bpffs".into(),
        bpffs.path(),
    ]);
    assert_one_line_error(&out, &["is not bound by nvbind"]);
    check_intact("at the end");
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let nodes = Nodes::of(&host);
    let bpffs = Bpffs::mount();
    let cgroup = TestCgroup::new(Tree::V2, "dry");
    let out = run_ok(&agent_args(
        &[
            "bind",
            "--cgroup",
            &cgroup.arg(),
            "--gpu",
            "all",
            "--dry-run",
        ],
        &host,
        &bpffs,
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "c 195:0 rw",
        "c 195:255 rw",
        "c 226:0 rw",
        "c 226:129 rw",
        "c 235:0 rw",
        "c 1:3 rw",
        "c 136:* rw",
    ] {
        assert!(text.contains(line), "dry run shows {line}: {text}");
    }
    let seen = cgroup.probe(&nodes.all());
    assert_all(
        &seen,
        &[nodes.nvidia.clone(), nodes.amd.clone()].concat(),
        "ENXIO",
        "dry run",
    );
    assert!(
        !bpffs.dir.path().join("nvbind").exists(),
        "a dry run does not even open the registry"
    );
    // Listing is a read: it creates nothing either (the daemon serves it on every GET).
    let out = run_ok(&agent_args(&["bindings"], &host, &bpffs));
    assert!(
        !bpffs.dir.path().join("nvbind").exists(),
        "listing creates no registry: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `bind` without `--bpffs` pins in the system's place, `/sys/fs/bpf`, and mounts it there when
/// nothing is mounted (as systemd does at boot) instead of refusing. In a mount namespace of its
/// own, so the mount and the binding pinned in it end with the test.
#[test]
fn bind_mounts_the_system_bpffs_when_it_is_not_mounted() {
    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let cgroup = TestCgroup::new(Tree::V2, "system-bpffs");
    let script = r#"umount /sys/fs/bpf 2>/dev/null
if grep -q " /sys/fs/bpf bpf " /proc/self/mounts; then echo "still mounted"; exit 3; fi
"$@" || exit $?
grep -q " /sys/fs/bpf bpf " /proc/self/mounts && echo MOUNTED"#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(agent_bin())
        .args(["bind", "--cgroup", &cgroup.arg(), "--gpu", "all"])
        .args(host.root_args())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("MOUNTED"),
        "bind mounted /sys/fs/bpf and pinned there: {stdout}{}",
        stderr(&out)
    );
}
