//! Containers for real: Podman (Debian's 4.3 with runc) given a fixture host's GPUs through the
//! CDI spec `nvbind-agent cdi generate` writes, then bound and unbound by container id and by
//! pid, with the kernel's answer checked from inside the container; a container started with
//! one GPU is not bound to another. Docker, containerd and CRI-O do not run here: their ids are
//! found in real cgroups laid out as they lay them out, and bound there.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use nvbind_tests::{
    agent, assert_one_line_error, attach_device_program_like_runc, mount_point, podman::CdiSpec,
    podman::Container, probe_bin, require_root, stderr, Bpffs, FixtureHost, Tree,
};
use serde_json::Value;

const FIXTURE: &str = "mixed-nvidia-amd";
/// GPU 0 of the fixture is the NVIDIA card (card1, renderD129, nvidia0), GPU 1 the AMD card
/// (card0, renderD128); `kfd` is the AMD card's companion, `nvidiactl` the NVIDIA card's.
const GPU0_NODE: &str = "/dev/dri/card1";
const GPU1_NODE: &str = "/dev/dri/card0";
const DENIED: &str = "Operation not permitted";

/// `nvbind-agent ARGS HOST-ROOTS --bpffs BPFFS` for the binding commands.
fn bind_cmd(host: &FixtureHost, bpffs: &Bpffs, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if matches!(args.first(), Some(&"bind")) {
        all.extend(host.root_args());
        all.extend(["--nvml".to_string(), "never".to_string()]);
    }
    all.extend(["--bpffs".to_string(), bpffs.path()]);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    agent(&all)
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bindings nvbind lists (of one container, with `container`).
fn bindings(bpffs: &Bpffs, container: Option<&str>) -> Vec<Value> {
    let mut args = vec!["bindings", "--json"];
    if let Some(id) = container {
        args.extend(["--container", id]);
    }
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--bpffs".to_string(), bpffs.path()]);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let text = ok(agent(&all), "bindings");
    serde_json::from_str::<Value>(&text)
        .expect("bindings --json")
        .as_array()
        .expect("a list")
        .clone()
}

/// The fixture's device nodes as the container sees them: /dev/REL → "major:minor".
fn fixture_nodes() -> BTreeMap<String, String> {
    let listing = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/hosts")
            .join(FIXTURE)
            .join("dev.txt"),
    )
    .expect("dev.txt");
    listing
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (format!("/dev/{}", f[0]), format!("{}:{}", f[2], f[3]))
        })
        .collect()
}

#[test]
fn cdi_devices_give_a_podman_container_exactly_their_gpus_nodes() {
    require_root();
    let host = FixtureHost::new(FIXTURE);
    let spec = CdiSpec::write(&host, "nodes");
    // The lowest version that can describe the spec, which Podman 4.3's CDI library knows
    // (it refuses 1.1.0: "unresolvable CDI devices").
    assert_eq!(spec.json["cdiVersion"], "0.5.0");
    let fixture = fixture_nodes();
    for name in ["0", "1", "all"] {
        let container = Container::start(&[spec.device(name)]);
        let inside = container.char_devices();
        // Of the host's GPU nodes, the container has exactly those of the device and the
        // spec's shared ones, with the host's numbers.
        let gpu_nodes: Vec<String> = inside
            .keys()
            .filter(|path| fixture.contains_key(*path))
            .cloned()
            .collect();
        // What each device must give, from the fixture's layout (GPU 0 is the NVIDIA card,
        // GPU 1 the AMD card), not from the spec under test.
        let shared = [
            "/dev/kfd",
            "/dev/nvidia-modeset",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidiactl",
        ];
        let own: &[&str] = match name {
            "0" => &["/dev/dri/card1", "/dev/dri/renderD129", "/dev/nvidia0"],
            "1" => &["/dev/dri/card0", "/dev/dri/renderD128"],
            _ => &[
                "/dev/dri/card0",
                "/dev/dri/card1",
                "/dev/dri/renderD128",
                "/dev/dri/renderD129",
                "/dev/nvidia0",
            ],
        };
        let mut expected: Vec<String> = own.iter().chain(&shared).map(|p| p.to_string()).collect();
        expected.sort();
        assert_eq!(gpu_nodes, expected, "--device {name}: {inside:?}");
        assert_eq!(gpu_nodes, spec.nodes_of(name), "the spec's device {name}");
        for path in &gpu_nodes {
            assert_eq!(inside[path], fixture[path], "{path} in --device {name}");
        }
        // And the devices every container gets.
        assert_eq!(inside.get("/dev/null").map(String::as_str), Some("1:3"));
    }
}

#[test]
fn a_podman_container_is_bound_by_id_and_by_pid_and_unbound() {
    require_root();
    let host = FixtureHost::new(FIXTURE);
    let bpffs = Bpffs::mount();
    let spec = CdiSpec::write(&host, "bind");
    let container = Container::start(&[spec.device("all")]);
    let nodes = [GPU0_NODE, GPU1_NODE, "/dev/kfd", "/dev/nvidiactl"];
    let denied = |results: &BTreeMap<String, String>| -> Vec<String> {
        results
            .iter()
            .filter(|(_, r)| r.as_str() == DENIED)
            .map(|(n, _)| n.clone())
            .collect()
    };
    assert_eq!(
        denied(&container.open_results(&nodes)),
        Vec::<String>::new()
    );

    // By a prefix of its id, to GPU 0: GPU 1's node and its companion are denied inside.
    let prefix = &container.id[..12];
    ok(
        bind_cmd(
            &host,
            &bpffs,
            &["bind", "--container", prefix, "--gpu", "0"],
        ),
        "bind --container",
    );
    assert_eq!(
        denied(&container.open_results(&nodes)),
        [GPU1_NODE, "/dev/kfd"]
    );
    let listed = bindings(&bpffs, Some(&container.id[..6]));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["container_id"], container.id.as_str());
    assert_eq!(listed[0]["state"], "enforced");
    assert_eq!(listed[0]["gpus"][0]["index"], 0);
    let cgroup = listed[0]["cgroup"].as_str().expect("cgroup").to_string();
    assert!(
        cgroup.ends_with(&format!("libpod-{}", container.id)),
        "the container's own cgroup: {cgroup}"
    );
    // The text listing names the container too.
    let text = ok(agent(&["bindings", "--bpffs", &bpffs.path()]), "bindings");
    assert!(text.contains(&format!("container {prefix}")), "{text}");

    ok(
        bind_cmd(
            &host,
            &bpffs,
            &["unbind", "--container", &container.id[..8]],
        ),
        "unbind --container",
    );
    assert_eq!(
        denied(&container.open_results(&nodes)),
        Vec::<String>::new()
    );
    assert!(bindings(&bpffs, None).is_empty());

    // By the pid of its process, to GPU 1.
    let pid = container.pid().to_string();
    ok(
        bind_cmd(&host, &bpffs, &["bind", "--pid", &pid, "--gpu", "1"]),
        "bind --pid",
    );
    assert_eq!(
        denied(&container.open_results(&nodes)),
        ["/dev/dri/card1", "/dev/nvidiactl"]
    );
    // The pid's binding is the container's.
    let listed = bindings(&bpffs, Some(prefix));
    assert_eq!(listed.len(), 1, "{listed:?}");
    ok(
        bind_cmd(&host, &bpffs, &["unbind", "--pid", &pid]),
        "unbind --pid",
    );
    assert_eq!(
        denied(&container.open_results(&nodes)),
        Vec::<String>::new()
    );

    // Nothing left to unbind: a one-line error.
    let out = bind_cmd(&host, &bpffs, &["unbind", "--container", prefix]);
    assert_one_line_error(&out, &["no binding of a container whose id starts", prefix]);
}

#[test]
fn a_container_started_with_one_gpu_is_not_bound_to_another() {
    require_root();
    let host = FixtureHost::new(FIXTURE);
    let bpffs = Bpffs::mount();
    let spec = CdiSpec::write(&host, "given");
    let container = Container::start(&[spec.device("0")]);
    let prefix = &container.id[..12];
    let pid = container.pid().to_string();
    let given = format!(
        "was started with CDI device {} (GPU 0: /dev/dri/card1, /dev/dri/renderD129, \
         /dev/nvidia0), and a binding to GPU 1 would take it away",
        spec.device("0")
    );
    let fixes = format!(
        "add --gpu 0, start it again with --device {}",
        spec.device("1")
    );
    for (target, named) in [
        (["--container", prefix], format!("container {prefix}")),
        (["--pid", pid.as_str()], format!("process {pid}")),
    ] {
        let mut args = vec!["bind", "--gpu", "1"];
        args.extend(target);
        for dry_run in [false, true] {
            let mut args = args.clone();
            if dry_run {
                args.push("--dry-run");
            }
            let out = bind_cmd(&host, &bpffs, &args);
            assert_one_line_error(&out, &[&named, &given, &fixes, "--force"]);
        }
        assert!(bindings(&bpffs, None).is_empty(), "nothing was bound");
    }
    // Keeping GPU 0 is allowed; so is taking it away on purpose.
    ok(
        bind_cmd(
            &host,
            &bpffs,
            &["bind", "--container", prefix, "--gpu", "0", "--gpu", "1"],
        ),
        "bind to both",
    );
    ok(
        bind_cmd(
            &host,
            &bpffs,
            &["bind", "--container", prefix, "--gpu", "1", "--force"],
        ),
        "bind --force",
    );
    let results = container.open_results(&[GPU0_NODE]);
    assert_eq!(results[GPU0_NODE], DENIED, "forced: GPU 0 is gone");
    ok(
        bind_cmd(&host, &bpffs, &["unbind", "--container", prefix]),
        "unbind",
    );
}

/// A container id no engine would pick, unique to this run and layout: `tag` in its first
/// digits, so that its 12-digit prefix is unique too.
fn fake_id(tag: u8) -> String {
    format!("{tag:02x}e5{:08x}{}", std::process::id(), "0".repeat(52))
}

/// A cgroup layout an engine makes, built for real in both hierarchies below a parent of the
/// test's own, with a process in the container's cgroup (and one in its monitor's, where the
/// engine has one). Removed when dropped.
struct Layout {
    /// The layout's top directory in each hierarchy (v2 first).
    parents: Vec<PathBuf>,
    sleepers: Vec<Child>,
}

impl Layout {
    /// `container` is the container's cgroup below the parent; `process_in` where its process
    /// sits (itself, or a child); `monitor` a sibling cgroup named after the id too.
    fn build(name: &str, container: &str, process_in: &str, monitor: Option<&str>) -> Layout {
        let mut layout = Layout {
            parents: Vec::new(),
            sleepers: Vec::new(),
        };
        for tree in [Tree::V2, Tree::V1] {
            let root = mount_point(tree);
            // What a killed run of this test left.
            let stale = format!("nvbind-test-{name}-");
            for entry in std::fs::read_dir(&root)
                .expect("read the cgroup root")
                .flatten()
            {
                if entry.file_name().to_string_lossy().starts_with(&stale) {
                    remove_tree(&entry.path());
                }
            }
            let parent = root.join(format!("{stale}{}", std::process::id()));
            layout.parents.push(parent.clone());
            for dir in [Some(process_in), monitor, Some(container)]
                .into_iter()
                .flatten()
            {
                let path = parent.join(dir);
                std::fs::create_dir_all(&path)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
            }
        }
        // One process per cgroup that holds one, in both hierarchies.
        for dir in [Some(process_in), monitor].into_iter().flatten() {
            let child = Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep");
            for parent in &layout.parents {
                std::fs::write(
                    parent.join(dir).join("cgroup.procs"),
                    child.id().to_string(),
                )
                .expect("move the process into the layout");
            }
            layout.sleepers.push(child);
        }
        layout
    }

    fn v2(&self, rel: &str) -> PathBuf {
        self.parents[0].join(rel)
    }

    fn v1(&self, rel: &str) -> PathBuf {
        self.parents[1].join(rel)
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        for child in &mut self.sleepers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for parent in &self.parents {
            remove_tree(parent);
        }
    }
}

/// Removes a test's cgroup tree: its processes (the test's own sleepers, or a killed run's) are
/// killed, then the directories go, deepest first (the kernel may take a moment to let the
/// last process go).
fn remove_tree(top: &Path) {
    let mut dirs = vec![top.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let children: Vec<PathBuf> = std::fs::read_dir(&dirs[i])
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        dirs.extend(children);
        i += 1;
    }
    for dir in &dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for dir in dirs.iter().rev() {
        for _ in 0..250 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn docker_containerd_and_crio_containers_are_found_by_id_in_their_cgroup_layouts() {
    require_root();
    let host = FixtureHost::new(FIXTURE);
    let bpffs = Bpffs::mount();
    let pod = "pod6b7e1c2a_1111_2222_3333_444455556666";
    let cases: Vec<(&str, String, String, Option<String>)> = {
        let (d1, d2, c1, c2, o1, p1, k1) = (
            fake_id(1),
            fake_id(2),
            fake_id(3),
            fake_id(4),
            fake_id(5),
            fake_id(6),
            fake_id(7),
        );
        let node = fake_id(20);
        vec![
            ("docker-systemd", format!("system.slice/docker-{d1}.scope"), String::new(), None),
            ("docker-cgroupfs", format!("docker/{d2}"), String::new(), None),
            (
                "containerd-systemd",
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{pod}.slice/cri-containerd-{c1}.scope"
                ),
                String::new(),
                None,
            ),
            (
                "containerd-cgroupfs",
                format!("kubepods/besteffort/{pod}/{c2}"),
                String::new(),
                None,
            ),
            (
                "crio-systemd",
                format!("kubepods.slice/kubepods-burstable.slice/crio-{o1}.scope"),
                String::new(),
                Some(format!("kubepods.slice/kubepods-burstable.slice/crio-conmon-{o1}.scope")),
            ),
            (
                "podman-systemd",
                format!("machine.slice/libpod-{p1}.scope"),
                "/container".to_string(),
                Some(format!("machine.slice/libpod-conmon-{p1}.scope")),
            ),
            // A kind node (Kubernetes in a Docker container): its pods' containers inside it.
            (
                "kind-node",
                format!(
                    "system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-{pod}.slice/cri-containerd-{k1}.scope"
                ),
                String::new(),
                None,
            ),
        ]
    };
    for (tag, (name, container, child, monitor)) in cases.iter().enumerate() {
        let id = fake_id(tag as u8 + 1);
        let process_in = format!("{container}{child}");
        let layout = Layout::build(name, container, &process_in, monitor.as_deref());
        let prefix = &id[..12];
        let plan = |extra: &[&str]| -> Value {
            let mut args = vec![
                "bind",
                "--container",
                prefix,
                "--gpu",
                "0",
                "--dry-run",
                "--json",
            ];
            args.extend(extra);
            let text = ok(bind_cmd(&host, &bpffs, &args), name);
            serde_json::from_str(&text).expect("the plan is JSON")
        };
        // The container's own cgroup (not its process's child, not its monitor's), in v2 by
        // default and in v1 when asked.
        let v2 = std::fs::canonicalize(layout.v2(container)).expect("v2 dir");
        let v1 = std::fs::canonicalize(layout.v1(container)).expect("v1 dir");
        let default = plan(&[]);
        assert_eq!(default["cgroup"], v2.display().to_string(), "{name}");
        assert_eq!(default["hierarchy"], "v2", "{name}");
        let in_v1 = plan(&["--hierarchy", "v1"]);
        assert_eq!(in_v1["cgroup"], v1.display().to_string(), "{name}");
        // A whole id in upper case names it too.
        let upper = id.to_ascii_uppercase();
        let whole = ok(
            bind_cmd(
                &host,
                &bpffs,
                &[
                    "bind",
                    "--container",
                    &upper,
                    "--gpu",
                    "0",
                    "--dry-run",
                    "--json",
                ],
            ),
            name,
        );
        let whole: Value = serde_json::from_str(&whole).expect("JSON");
        assert_eq!(whole["cgroup"], default["cgroup"], "{name}");
    }

    // Bound for real, beside the engine's own device program (as runc and crun attach one to
    // a container's cgroup on cgroup v2): the kernel lets through what both allow, and
    // unbinding leaves the engine's program in place.
    let card1 = host.path("dev/dri/card1").display().to_string();
    let card0 = host.path("dev/dri/card0").display().to_string();
    for (tag, engine_allows) in [(11u8, true), (12u8, false)] {
        let id = fake_id(tag);
        let container = format!("system.slice/docker-{id}.scope");
        let layout = Layout::build(&format!("docker-bound-{tag}"), &container, &container, None);
        let cgroup = layout.v2(&container);
        attach_device_program_like_runc(&cgroup, engine_allows);
        let out = ok(
            bind_cmd(
                &host,
                &bpffs,
                &["bind", "--container", &id[..12], "--gpu", "1"],
            ),
            "bind beside the engine's program",
        );
        assert!(
            out.contains("attached beside the container engine's own device program id")
                && out.contains("'other_tool'"),
            "{out}"
        );
        let probe = || -> Value {
            let out = Command::new(probe_bin())
                .arg("--join")
                .arg(cgroup.join("cgroup.procs"))
                .args([&card1, &card0])
                .output()
                .expect("run open-probe");
            assert!(out.status.success(), "open-probe: {}", stderr(&out));
            serde_json::from_slice(&out.stdout).expect("open-probe JSON")
        };
        let engine = if engine_allows { "ENXIO" } else { "EPERM" };
        let seen = probe();
        assert_eq!(seen[&card1], "EPERM", "GPU 0 is not bound: {seen}");
        assert_eq!(
            seen[&card0], engine,
            "GPU 1 as the engine allows it: {seen}"
        );
        let listed = bindings(&bpffs, Some(&id[..4]));
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["container_id"], id.as_str());
        assert_eq!(listed[0]["state"], "enforced");
        ok(
            bind_cmd(&host, &bpffs, &["unbind", "--container", &id[..12]]),
            "unbind the docker layout",
        );
        let seen = probe();
        assert_eq!(seen[&card1], engine, "the engine's program alone: {seen}");
        assert_eq!(seen[&card0], engine, "the engine's program alone: {seen}");
    }
}

#[test]
fn unknown_ambiguous_and_malformed_container_ids_are_refused_in_one_line() {
    require_root();
    let host = FixtureHost::new(FIXTURE);
    let bpffs = Bpffs::mount();
    // Two containers whose ids share their first digits.
    let a = format!("abc1{:08x}{}", std::process::id(), "1".repeat(52));
    let b = format!("abc1{:08x}{}", std::process::id(), "2".repeat(52));
    let _first = Layout::build(
        "ambiguous-a",
        &format!("docker/{a}"),
        &format!("docker/{a}"),
        None,
    );
    let _second = Layout::build(
        "ambiguous-b",
        &format!("docker/{b}"),
        &format!("docker/{b}"),
        None,
    );
    let shared = &a[..12];
    let bind = |id: &str| bind_cmd(&host, &bpffs, &["bind", "--container", id, "--gpu", "0"]);
    assert_one_line_error(
        &bind(shared),
        &[
            &format!("container id {shared} is ambiguous"),
            "give more of it",
        ],
    );
    // One more digit tells them apart.
    ok(
        bind_cmd(
            &host,
            &bpffs,
            &["bind", "--container", &a[..13], "--gpu", "0", "--dry-run"],
        ),
        "a longer prefix",
    );
    assert_one_line_error(&bind("0dead0beef"), &["no container with id 0dead0beef"]);
    // A second cgroup named after a container's id (a user can make one in a subtree delegated
    // to them): neither is taken for the container.
    let c = fake_id(30);
    let _real = Layout::build(
        "decoy-real",
        &format!("system.slice/docker-{c}.scope"),
        &format!("system.slice/docker-{c}.scope"),
        None,
    );
    let _decoy = Layout::build(
        "decoy-fake",
        &format!("user.slice/user-1000.slice/user@1000.service/docker-{c}.scope"),
        &format!("user.slice/user-1000.slice/user@1000.service/docker-{c}.scope"),
        None,
    );
    assert_one_line_error(
        &bind(&c[..12]),
        &[
            &format!("container {} has 2 cgroups in cgroup v2", &c[..12]),
            "--cgroup",
        ],
    );
    assert_one_line_error(
        &bind("my-game"),
        &["\"my-game\" is not a container id", "podman inspect"],
    );
    assert_one_line_error(&bind("abc"), &["is not a container id"]);
    assert!(bindings(&bpffs, None).is_empty());
}
