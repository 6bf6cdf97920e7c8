//! `nvbind-agent cdi generate` on fixture hosts (tests/fixtures/hosts): the spec it writes, in the
//! lowest version that can describe it or the one asked for, passes the official CDI JSON schema
//! of the version it declares (tests/fixtures/cdi-schema) and names exactly the
//! device nodes the fixture's `dev.txt` lists; bad input fails with one line, exit 1 and no file.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Output,
};

use jsonschema::{Draft, Retrieve, Uri, Validator};
use nvbind_tests::{agent, assert_one_line_error, require_root, stderr, FixtureHost};
use serde_json::{json, Value};

const NV_UUID: &str = "GPU-6c7f1e3a-9b2d-4f8e-a1c3-5d7e9f0b2a48";
const AMD_UUID: &str = "a4c1f2e9b3d87065";

/// The versions `--cdi-version` can write for a spec with index names and host paths (0.3.0 and
/// 0.4.0 cannot describe one).
const WRITABLE: [&str; 6] = ["0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0"];

/// The schema released with a spec version (fixtures/cdi-schema/README.md says which release
/// each directory is).
fn schema_dir(version: &str) -> PathBuf {
    let release = match version {
        "0.5.0" => "spec-0.5.0",
        "0.6.0" => "spec-0.6.0",
        "0.7.0" | "0.8.0" | "1.0.0" => "spec-1.0.0",
        "1.1.0" => "spec-1.1.0",
        other => panic!("no CDI schema for version {other:?} among the fixtures"),
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cdi-schema")
        .join(release)
}

fn read_value(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Serves the schema's own files (`defs.json`) to its relative `$ref`s, and nothing else: the
/// schema has no `$id`, so `jsonschema` asks for `json-schema:///defs.json`.
struct SchemaFiles(PathBuf);

impl Retrieve for SchemaFiles {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.path().as_str().rsplit('/').next().unwrap_or_default();
        let path = self.0.join(name);
        if name.is_empty() || !path.is_file() {
            return Err(format!("{uri} is not a file of the CDI schema").into());
        }
        let text = std::fs::read_to_string(&path)?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Validators for a whole spec (`schema.json`) and for one `containerEdits` object: no released
/// `schema.json` describes the top-level `containerEdits`, so it is checked on its own.
struct CdiSchema {
    spec: Validator,
    edits: Validator,
}

impl CdiSchema {
    /// The schema of `version`.
    fn load(version: &str) -> CdiSchema {
        let dir = schema_dir(version);
        let schema = read_value(&dir.join("schema.json"));
        assert_eq!(
            schema["$schema"], "http://json-schema.org/draft-07/schema#",
            "the CDI schema is draft-07"
        );
        let build = |schema: &Value| {
            jsonschema::options()
                .with_draft(Draft::Draft7)
                .with_retriever(SchemaFiles(dir.clone()))
                .build(schema)
                .unwrap_or_else(|e| panic!("cannot compile the CDI schema: {e}"))
        };
        CdiSchema {
            spec: build(&schema),
            edits: build(&json!({"$ref": "defs.json#/definitions/containerEdits"})),
        }
    }

    /// Every schema violation in `spec`, as "instance path: message".
    fn violations(&self, spec: &Value) -> Vec<String> {
        let mut found: Vec<String> = self
            .spec
            .iter_errors(spec)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if let Some(edits) = spec.get("containerEdits") {
            found.extend(
                self.edits
                    .iter_errors(edits)
                    .map(|e| format!("/containerEdits{}: {e}", e.instance_path())),
            );
        }
        found
    }

    /// Checks `spec` against the schema of the version it declares.
    fn assert_valid_for_its_version(spec: &Value) {
        let version = spec["cdiVersion"].as_str().expect("cdiVersion");
        CdiSchema::load(version).assert_valid(spec);
    }

    fn assert_valid(&self, spec: &Value) {
        let found = self.violations(spec);
        assert!(
            found.is_empty(),
            "the spec breaks the CDI schema: {found:#?}\n{spec:#}"
        );
    }
}

/// `nvbind-agent cdi generate ARGS --nvml never` (NVML would describe this machine, not the
/// fixture).
fn cdi_generate(args: &[String]) -> Output {
    let mut all: Vec<&str> = vec!["cdi", "generate"];
    all.extend(args.iter().map(String::as_str));
    all.extend(["--nvml", "never"]);
    agent(&all)
}

/// Generates the spec of `host` into a fresh directory: the spec, and the directory's entries
/// (the spec alone, if it was written atomically and cleaned up after itself).
fn generate_for(host: &FixtureHost, extra: &[&str]) -> (Value, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("nvbind.json");
    let mut args = vec!["--output".to_string(), out.display().to_string()];
    args.extend(host.root_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = cdi_generate(&args);
    assert!(
        run.status.success(),
        "cdi generate failed: {}",
        stderr(&run)
    );
    let entries = entries(dir.path());
    (read_value(&out), entries)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The fixture's `dev.txt`: path relative to /dev → (type, major, minor).
fn dev_txt(fixture: &str) -> BTreeMap<String, (String, i64, i64)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/hosts")
        .join(fixture)
        .join("dev.txt");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "dev.txt line {l:?}");
            let n = |s: &str| s.parse::<i64>().expect("number");
            (f[0].to_string(), (f[1].to_string(), n(f[2]), n(f[3])))
        })
        .collect()
}

fn device<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no device {name:?}: {spec:#}"))
}

fn names(spec: &Value) -> Vec<&str> {
    spec["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect()
}

fn node_paths(edits: &Value) -> Vec<&str> {
    edits["deviceNodes"]
        .as_array()
        .expect("deviceNodes")
        .iter()
        .map(|n| n["path"].as_str().expect("path"))
        .collect()
}

/// Every device node in the spec (devices' and top level) is a character device under the
/// container's /dev, with the numbers `dev.txt` gives and the host path inside the fixture's dev
/// root. Returns how many nodes were checked.
fn assert_nodes_match_fixture(spec: &Value, host: &FixtureHost, fixture: &str) -> usize {
    let listed = dev_txt(fixture);
    let dev_root = host.path("dev");
    let mut edits: Vec<&Value> = spec["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| &d["containerEdits"])
        .collect();
    edits.push(&spec["containerEdits"]);
    let mut checked = 0;
    for node in edits
        .iter()
        .flat_map(|e| e["deviceNodes"].as_array())
        .flatten()
    {
        let path = node["path"].as_str().expect("path");
        let rel = path
            .strip_prefix("/dev/")
            .unwrap_or_else(|| panic!("{path} is not under /dev"));
        let (kind, major, minor) = listed
            .get(rel)
            .unwrap_or_else(|| panic!("{path} is not in {fixture}/dev.txt"));
        assert_eq!(node["type"], kind.as_str(), "{node}");
        assert_eq!(node["major"], *major, "{node}");
        assert_eq!(node["minor"], *minor, "{node}");
        assert_eq!(
            node["hostPath"],
            dev_root.join(rel).display().to_string(),
            "the host node lives in the fixture's dev root: {node}"
        );
        checked += 1;
    }
    checked
}

#[test]
fn a_mixed_host_spec_passes_the_schema_and_names_every_node() {
    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let (spec, left) = generate_for(&host, &[]);
    assert_eq!(left, ["nvbind.json"], "no temporary file is left behind");
    // Index names and host paths need 0.5.0, the lowest version that can describe the spec
    // (and the newest Debian 12's Podman knows).
    assert_eq!(spec["cdiVersion"], "0.5.0");
    CdiSchema::assert_valid_for_its_version(&spec);

    assert_eq!(spec["kind"], "nvbind.io/gpu");
    // The AMD card has no unique_id: it is device "1" only.
    assert_eq!(names(&spec), ["0", NV_UUID, "1", "all"]);
    let nv = &device(&spec, "0")["containerEdits"];
    assert_eq!(
        node_paths(nv),
        ["/dev/dri/card1", "/dev/dri/renderD129", "/dev/nvidia0"]
    );
    assert_eq!(&device(&spec, NV_UUID)["containerEdits"], nv);
    let amd = &device(&spec, "1")["containerEdits"];
    assert_eq!(node_paths(amd), ["/dev/dri/card0", "/dev/dri/renderD128"]);
    assert_eq!(
        node_paths(&device(&spec, "all")["containerEdits"]),
        [
            "/dev/dri/card1",
            "/dev/dri/renderD129",
            "/dev/nvidia0",
            "/dev/dri/card0",
            "/dev/dri/renderD128"
        ]
    );
    // The companions every user of a vendor's GPUs needs: once, sorted, at the top level.
    assert_eq!(
        node_paths(&spec["containerEdits"]),
        [
            "/dev/kfd",
            "/dev/nvidia-modeset",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidiactl"
        ]
    );
    // NVIDIA's fixed major 195, DRM's 226, as dev.txt has them (and the dynamic ones too).
    assert_eq!(nv["deviceNodes"][2]["major"], 195);
    assert_eq!(nv["deviceNodes"][0]["major"], 226);
    let checked = assert_nodes_match_fixture(&spec, &host, "mixed-nvidia-amd");
    assert_eq!(checked, 3 + 3 + 2 + 5 + 5);
}

#[test]
fn an_amd_dgpu_spec_passes_the_schema_and_is_named_by_its_unique_id() {
    require_root();
    let host = FixtureHost::new("amd-dgpu");
    let (spec, _) = generate_for(&host, &[]);
    CdiSchema::assert_valid_for_its_version(&spec);
    assert_eq!(names(&spec), ["0", AMD_UUID, "all"]);
    let own = json!({"deviceNodes": [
        {
            "path": "/dev/dri/card1",
            "hostPath": host.path("dev/dri/card1").display().to_string(),
            "type": "c",
            "major": 226,
            "minor": 1,
        },
        {
            "path": "/dev/dri/renderD128",
            "hostPath": host.path("dev/dri/renderD128").display().to_string(),
            "type": "c",
            "major": 226,
            "minor": 128,
        },
    ]});
    for name in ["0", AMD_UUID, "all"] {
        assert_eq!(device(&spec, name)["containerEdits"], own, "{name}");
    }
    assert_eq!(
        spec["containerEdits"],
        json!({"deviceNodes": [{
            "path": "/dev/kfd",
            "hostPath": host.path("dev/kfd").display().to_string(),
            "type": "c",
            "major": 235,
            "minor": 0,
        }]})
    );
    assert_eq!(assert_nodes_match_fixture(&spec, &host, "amd-dgpu"), 7);
}

#[test]
fn the_schema_check_is_not_vacuous() {
    // A validator whose $ref to defs.json went nowhere would pass anything: break a spec in
    // ways only defs.json and schema.json can see.
    for version in WRITABLE {
        schema_check_is_not_vacuous(version);
    }
}

fn schema_check_is_not_vacuous(version: &str) {
    let schema = CdiSchema::load(version);
    let good = json!({
        "cdiVersion": version,
        "kind": "nvbind.io/gpu",
        "devices": [{"name": "0", "containerEdits": {"deviceNodes": [
            {"path": "/dev/dri/card0", "type": "c", "major": 226, "minor": 0}
        ]}}],
        "containerEdits": {"deviceNodes": [{"path": "/dev/kfd"}]},
    });
    schema.assert_valid(&good);
    let breaks = |what: &str, edit: fn(&mut Value)| {
        let mut spec = good.clone();
        edit(&mut spec);
        assert!(
            !schema.violations(&spec).is_empty(),
            "{what} passed the {version} schema"
        );
    };
    breaks("no devices", |s| {
        s.as_object_mut().expect("object").remove("devices");
    });
    breaks("a node without path", |s| {
        s["devices"][0]["containerEdits"]["deviceNodes"][0]
            .as_object_mut()
            .expect("node")
            .remove("path");
    });
    breaks("a negative gid", |s| {
        s["devices"][0]["containerEdits"]["deviceNodes"][0]["gid"] = json!(-1)
    });
    breaks("a major that is a string", |s| {
        s["devices"][0]["containerEdits"]["deviceNodes"][0]["major"] = json!("226")
    });
    breaks("a top-level node without path", |s| {
        s["containerEdits"]["deviceNodes"][0] = json!({"type": "c"})
    });
}

#[test]
fn without_output_the_spec_goes_to_stdout_and_the_kind_can_be_chosen() {
    require_root();
    let host = FixtureHost::new("amd-dgpu");
    let mut args = host.root_args();
    args.extend(["--kind".to_string(), "example.com/gpu".to_string()]);
    let run = cdi_generate(&args);
    assert!(
        run.status.success(),
        "cdi generate failed: {}",
        stderr(&run)
    );
    let spec: Value = serde_json::from_slice(&run.stdout).expect("stdout is the spec");
    CdiSchema::assert_valid_for_its_version(&spec);
    assert_eq!(spec["kind"], "example.com/gpu");
    let (written, _) = generate_for(&host, &["--kind", "example.com/gpu"]);
    assert_eq!(spec, written, "stdout and --output give the same spec");
}

#[test]
fn every_version_asked_for_is_written_and_passes_its_own_schema() {
    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let (lowest, _) = generate_for(&host, &[]);
    for version in WRITABLE {
        let (spec, _) = generate_for(&host, &["--cdi-version", version]);
        assert_eq!(spec["cdiVersion"], version);
        CdiSchema::assert_valid_for_its_version(&spec);
        // Only the version differs.
        let mut same = spec.clone();
        same["cdiVersion"] = lowest["cdiVersion"].clone();
        assert_eq!(same, lowest, "{version}");
    }
    // A leading v, as the CDI repository tags its releases.
    let (spec, _) = generate_for(&host, &["--cdi-version", "v1.0.0"]);
    assert_eq!(spec["cdiVersion"], "1.0.0");
}

#[test]
fn a_dot_in_the_class_needs_0_6_0_and_older_versions_are_refused_cleanly() {
    require_root();
    let host = FixtureHost::new("amd-dgpu");
    let (spec, _) = generate_for(&host, &["--kind", "example.com/gpu.v2"]);
    assert_eq!(spec["cdiVersion"], "0.6.0");
    CdiSchema::assert_valid_for_its_version(&spec);

    let refused = |extra: &[&str], expect: &[&str]| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec![
            "--output".to_string(),
            dir.path().join("nvbind.json").display().to_string(),
        ];
        args.extend(host.root_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        assert_clean_failure(&cdi_generate(&args), dir.path(), expect);
    };
    refused(
        &["--kind", "example.com/gpu.v2", "--cdi-version", "0.5.0"],
        &[
            "CDI version 0.5.0 cannot describe this spec",
            "the class \"gpu.v2\" of the kind has a dot",
            "ask for 0.6.0 or later",
        ],
    );
    refused(
        &["--cdi-version", "0.4.0"],
        &[
            "device \"0\" starts with a digit",
            "hostPath",
            "ask for 0.5.0",
        ],
    );
    refused(
        &["--cdi-version", "2.0.0"],
        &["unknown CDI version \"2.0.0\"", "0.3.0, 0.4.0, 0.5.0"],
    );
}

/// Exit 1, one line on stderr mentioning each of `expect`, and nothing written into `dir`.
fn assert_clean_failure(run: &Output, dir: &Path, expect: &[&str]) {
    assert_one_line_error(run, expect);
    assert_eq!(entries(dir), Vec::<String>::new(), "nothing left behind");
}

#[test]
fn output_into_a_missing_directory_fails_cleanly() {
    require_root();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir");
    let out = missing.join("nvbind.json");
    let mut args = vec!["--output".to_string(), out.display().to_string()];
    args.extend(host.root_args());
    let run = cdi_generate(&args);
    assert_clean_failure(&run, dir.path(), &[&missing.display().to_string()]);
    assert!(!out.exists() && !missing.exists());
}

#[test]
fn a_bad_kind_fails_cleanly() {
    require_root();
    let host = FixtureHost::new("amd-dgpu");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "--output".to_string(),
        dir.path().join("nvbind.json").display().to_string(),
        "--kind".to_string(),
        "nvbind.io/gpu/0".to_string(),
    ];
    args.extend(host.root_args());
    let run = cdi_generate(&args);
    assert_clean_failure(
        &run,
        dir.path(),
        &["invalid CDI kind \"nvbind.io/gpu/0\"", "VENDOR/CLASS"],
    );
}

#[test]
fn a_host_without_gpus_fails_cleanly() {
    require_root();
    let empty = tempfile::tempdir().expect("tempdir");
    for d in ["sys", "dev", "proc"] {
        std::fs::create_dir(empty.path().join(d)).expect("mkdir");
    }
    let out_dir = tempfile::tempdir().expect("tempdir");
    let root = |d: &str| empty.path().join(d).display().to_string();
    let run = cdi_generate(&[
        "--output".to_string(),
        out_dir.path().join("nvbind.json").display().to_string(),
        "--sysfs-root".to_string(),
        root("sys"),
        "--dev-root".to_string(),
        root("dev"),
        "--proc-root".to_string(),
        root("proc"),
    ]);
    assert_clean_failure(&run, out_dir.path(), &["no GPU found", "--sysfs-root"]);
}

#[test]
fn gpus_without_device_nodes_fail_cleanly() {
    require_root();
    // The fixture's sysfs with an empty dev root: the GPUs exist, their nodes do not.
    let host = FixtureHost::new("mixed-nvidia-amd");
    let empty_dev = tempfile::tempdir().expect("tempdir");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "--output".to_string(),
        out_dir.path().join("nvbind.json").display().to_string(),
    ];
    args.extend(host.root_args());
    let at = args
        .iter()
        .position(|a| a == "--dev-root")
        .expect("--dev-root");
    args[at + 1] = empty_dev.path().display().to_string();
    let run = cdi_generate(&args);
    assert_clean_failure(
        &run,
        out_dir.path(),
        &[
            "2 GPU(s) found, but none has a device node of its own",
            &empty_dev.path().display().to_string(),
            "--dev-root",
        ],
    );
}
