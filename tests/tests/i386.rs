//! 32-bit (i386) games: Debian's i386 vkcube (Vulkan on lavapipe) and glxgears (GL on llvmpipe),
//! real 32-bit programs, not injected. The agent and the program run where the i386 runtime and
//! drivers are installed as on a multiarch gaming host (`nvbind_tests::I386::installed`: the
//! tree setup unpacked, laid over /usr in a private mount namespace).

use std::{collections::BTreeSet, process::Command, time::Duration};

use nvbind_tests::{
    agent_command, busiest, monotonic_ns, read_csv, read_json, require_root, stderr, WatchedAgent,
    Xvfb, I386,
};

/// The `PATH+0xOFFSET` of each driver present function the agent hooked at start (sources named
/// `uprobe:PATH+0xOFFSET:vkQueuePresentKHR (DEVICE)`), attached or not.
fn startup_present_functions(
    report_or_doctor: &serde_json::Value,
    key: &str,
) -> Vec<(String, bool)> {
    report_or_doctor[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {report_or_doctor}"))
        .iter()
        .filter_map(|s| {
            let name = s["name"].as_str()?;
            let function = name
                .strip_prefix("uprobe:")?
                .split_once(":vkQueuePresentKHR (")?
                .0;
            function
                .contains("+0x")
                .then(|| (function.to_string(), s["attached"] == true))
        })
        .collect()
}

#[test]
fn vkcube_32_bit_is_captured_from_its_first_frame() {
    require_root();
    let i386 = I386::require();
    let x = Xvfb::start().expect("Xvfb");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let out_s = out.display().to_string();
    let vkcube = i386.program("vkcube").display().to_string();
    // vkcube --c N presents exactly N frames and exits; the capture ends when it does (the
    // duration only bounds a hang).
    let mut cmd = agent_command(
        &[
            "record",
            "--duration",
            "300",
            "--out",
            &out_s,
            "--",
            &vkcube,
            "--c",
            "300",
        ],
        &[("DISPLAY", x.display.as_str())],
    );
    i386.installed(&mut cmd);
    let result = cmd.output().expect("run the agent");
    assert!(
        result.status.success(),
        "record failed: {}",
        stderr(&result)
    );
    let report = read_json(&out);
    let p = busiest(&report);
    assert_eq!(p["comm"], "vkcube", "{}", report["processes"]);
    assert_eq!(p["frames"]["source"], "vulkan", "{}", p["frames"]);
    assert_eq!(
        p["frames"]["count"], 300,
        "every frame, from the first: {}",
        p["frames"]
    );
    assert_eq!(report["capture"]["end_reason"], "targets-exited");

    // Its driver's present function was hooked at start, by the 32-bit resolver, once.
    let hooked: Vec<String> = startup_present_functions(&report["capture"], "sources")
        .into_iter()
        .filter(|(f, attached)| {
            *attached && f.starts_with("/usr/lib/i386-linux-gnu/libvulkan_lvp.so+")
        })
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        hooked.len(),
        1,
        "the i386 lavapipe's present function, hooked at start: {}",
        report["capture"]["sources"]
    );
    // And the ProcAddr probes read vkcube's 32-bit call (name on the stack, pointer in eax): the
    // function it resolved is that same one.
    assert_eq!(
        p["frames"]["vulkan_present_functions"],
        serde_json::json!(hooked),
        "{}",
        p["frames"]
    );
}

#[test]
fn glxgears_32_bit_is_captured() {
    require_root();
    let i386 = I386::require();
    let x = Xvfb::start().expect("Xvfb");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let csv = dir.path().join("frames.csv");
    let (out_s, csv_s) = (out.display().to_string(), csv.display().to_string());
    let glxgears = i386.program("glxgears").display().to_string();
    let mut cmd = agent_command(
        &[
            "record",
            "--out",
            &out_s,
            "--frames-csv",
            &csv_s,
            "--",
            &glxgears,
        ],
        &[("DISPLAY", x.display.as_str()), ("RUST_LOG", "info")],
    );
    i386.installed(&mut cmd);
    let mut agent = WatchedAgent::watch(cmd);
    // glxgears counts its own frames and prints the count of its first 5 s once they are over.
    let line = agent.wait_for_stdout_line(" frames in ", Duration::from_secs(120));
    let seen_at = monotonic_ns();
    agent.signal(libc::SIGINT);
    let (status, err) = agent.finish(Duration::from_secs(60));
    assert!(status.success(), "record failed: {err}");
    let own_count: usize = line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("glxgears' count: {line:?}"));

    let report = read_json(&out);
    let p = busiest(&report);
    assert_eq!(p["comm"], "glxgears", "{}", report["processes"]);
    assert_eq!(p["frames"]["source"], "glx", "{}", p["frames"]);
    assert!(
        attached_sources(&report)
            .contains("uprobe:/usr/lib/i386-linux-gnu/libGLX.so.0.0.0:glXSwapBuffers"),
        "the i386 libGLX hooked: {}",
        report["capture"]["sources"]
    );
    // Every frame glxgears counted was presented before it printed the count, so before the test
    // read it: the agent has each of them. (The frames CSV and the test's clock are both
    // CLOCK_MONOTONIC.)
    let before: usize = read_csv(&csv)
        .iter()
        .filter(|row| row["present_ns"].parse::<u64>().expect("present_ns") <= seen_at)
        .count();
    assert!(
        before >= own_count,
        "glxgears counted {own_count} frames ({line:?}), the agent {before} by then"
    );
}

/// The attached sources' names.
fn attached_sources(report: &serde_json::Value) -> BTreeSet<String> {
    report["capture"]["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .filter(|s| s["attached"] == true)
        .filter_map(|s| Some(s["name"].as_str()?.to_string()))
        .collect()
}

/// `doctor --json` in the i386 namespace with `env` added to the agent's environment.
fn doctor_with(i386: &I386, env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd: Command = agent_command(&["doctor", "--json"], env);
    i386.installed(&mut cmd);
    let out = cmd.output().expect("run doctor");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", stderr(&out)))
}

#[test]
fn the_resolvers_ignore_the_callers_vulkan_environment() {
    require_root();
    let i386 = I386::require();
    let clean = doctor_with(&i386, &[]);
    let expected = startup_present_functions(&clean, "probes");
    // Both ABIs' drivers, 64-bit and 32-bit lavapipe, attached.
    for dir in ["/usr/lib/x86_64-linux-gnu/", "/usr/lib/i386-linux-gnu/"] {
        assert!(
            expected.iter().any(|(f, attached)| *attached
                && f.starts_with(dir)
                && f.contains("libvulkan_lvp.so+")),
            "lavapipe in {dir}: {expected:?}"
        );
    }
    // Each resolver also found its driver's pipeline compile function (the 32-bit one prints it
    // from C: nvbind-agent/resolve32), hooked by the compile probes.
    let probes = clean["probes"].as_array().expect("probes");
    for dir in ["/usr/lib/x86_64-linux-gnu/", "/usr/lib/i386-linux-gnu/"] {
        assert!(
            probes.iter().any(|s| s["family"] == "compile"
                && s["attached"] == true
                && s["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("uprobe:{dir}libvulkan_lvp.so+"))
                        && n.contains(":vkCreateGraphicsPipelines ("))),
            "lavapipe's vkCreateGraphicsPipelines in {dir}: {clean}"
        );
    }
    // What a shell pointing games at other drivers and layers would pass on: here, only the
    // 32-bit driver (as the user did), which alone left the 64-bit resolver no driver.
    let i686 = i386
        .sysroot
        .join("usr/share/vulkan/icd.d/lvp_icd.i686.json")
        .display()
        .to_string();
    let callers = doctor_with(
        &i386,
        &[
            ("VK_ICD_FILENAMES", i686.as_str()),
            ("VK_DRIVER_FILES", i686.as_str()),
            ("VK_ADD_DRIVER_FILES", "/nonexistent/icd.json"),
            ("VK_LOADER_DRIVERS_DISABLE", "*"),
            ("VK_INSTANCE_LAYERS", "VK_LAYER_NVBIND_nonexistent"),
        ],
    );
    assert_eq!(
        startup_present_functions(&callers, "probes"),
        expected,
        "the same drivers as in a clean environment"
    );
}
