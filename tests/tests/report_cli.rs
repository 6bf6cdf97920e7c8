//! `nvbind-agent report`: the human summary of a recorded report, and its SVG chart, opened in a
//! real browser (headless Chromium) to check it renders with the stutters marked.

use std::{path::Path, process::Command};

use nvbind_tests::{
    agent, frame_bounds_ms, pace_ms, record_game, require_root, stderr, stutter_unreported, GameRun,
};

/// `#ff7f0e`, the colour of `blocked` stutter markers (see report/svg.rs).
const BLOCKED_RGB: [u8; 3] = [0xff, 0x7f, 0x0e];

/// The frames before which the game below sleeps 60 ms (every 50th of 200).
const INJECTED: [u64; 4] = [49, 99, 149, 199];

fn record_stalling_game(dir: &Path) -> GameRun {
    let game = [
        "--frames",
        "200",
        "--interval-ms",
        "10",
        "--stall-every",
        "50",
        "--stall-ms",
        "60",
    ];
    record_game(dir, &[], &game, || {})
}

/// Counts pixels of one colour in a PNG.
fn count_pixels(png_path: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).expect("screenshot"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| px.len() >= 3 && px[..3] == rgb)
        .count()
}

#[test]
fn the_summary_and_the_chart_show_the_stutters() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let run = record_stalling_game(dir.path());
    let report = &run.out;
    let s = &run.report["processes"][0]["stutters"];
    let stutters = s["count"].as_u64().expect("count");
    let events = s["events"].as_array().expect("events");
    // Four injected sleeps, each a `blocked` stutter. A shared machine may add a real hitch of its
    // own, which is reported too (with whatever cause the kernel shows): it must be a frame the
    // game's own clock allows to have been long. The summary and the chart then show what the
    // report holds.
    // An injected sleep is `blocked`, unless the machine made the game wait longer for a CPU in
    // that frame than it slept: then `cpu-contention` is the true verdict (the larger share). Or
    // the kernel did not report the frame's switches or wakeup, and the report says so (at most
    // half of the sleeps).
    let mut unreported = 0;
    for k in INJECTED {
        let e = events
            .iter()
            .find(|e| e["frame"].as_u64() == Some(k))
            .unwrap_or_else(|| panic!("frame {k} is a stutter: {s}"));
        let t = &e["evidence"]["presenting_thread"];
        let ms = |name: &str| t[name].as_f64().unwrap_or_else(|| panic!("{name}: {e}"));
        let contended = e["cause"] == "cpu-contention" && ms("runq_wait_ms") > ms("blocked_ms");
        if stutter_unreported(e) {
            eprintln!("note: the kernel did not report frame {k}'s switches: {e}");
            unreported += 1;
            continue;
        }
        assert!(
            e["cause"] == "blocked" || contended,
            "frame {k} is a blocked stutter: {e}"
        );
    }
    assert!(unreported * 2 <= INJECTED.len(), "{s}");
    let w = &run.windows;
    let pace = pace_ms(w);
    for e in events {
        let k = e["frame"].as_u64().expect("frame") as usize;
        if INJECTED.contains(&(k as u64)) {
            continue;
        }
        assert!((1..w.len()).contains(&k), "{e}");
        // The probe stamps each present inside the game's [before, after] window of it.
        let (_, most) = frame_bounds_ms(w, k);
        assert!(
            most >= 2.0 * pace,
            "stutter at frame {k}, but the game's clock allows at most {most:.2} ms: {e}"
        );
        eprintln!("note: the machine itself stalled frame {k}: {}", e["cause"]);
    }
    let blocked = events.iter().filter(|e| e["cause"] == "blocked").count();
    assert_eq!(
        s["by_cause"]["blocked"].as_u64(),
        Some(blocked as u64),
        "{s}"
    );

    let svg = dir.path().join("chart.svg");
    let (report_s, svg_s) = (report.display().to_string(), svg.display().to_string());
    let out = agent(&["report", &report_s, "--svg", &svg_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("stutters: {stutters} (")), "{text}");
    assert!(text.contains(&format!("{blocked} blocked")), "{text}");
    assert!(text.contains("worst stutters:"), "{text}");
    assert!(blocked == 0 || text.contains("was blocked"), "{text}");
    assert!(text.contains("1% low"), "{text}");

    // The SVG is well-formed and holds one marker per stutter plus the legend's.
    let doc = std::fs::read_to_string(&svg).expect("svg written");
    let tree = roxmltree::Document::parse(&doc).expect("well-formed SVG");
    let markers = tree
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .filter(|n| {
            n.attribute("fill")
                .is_some_and(|f| f.eq_ignore_ascii_case("#FF7F0E"))
        })
        .count();
    assert_eq!(
        markers,
        blocked + 1,
        "{blocked} blocked stutters and a legend entry"
    );
    assert!(
        tree.descendants().any(|n| n.has_tag_name("polyline")),
        "the frame-time line"
    );

    // And a browser draws it.
    let png = dir.path().join("chart.png");
    let shot = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,820",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .output()
        .expect("NOT RUN: chromium is missing: run `cargo xtask setup`");
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let orange = count_pixels(&png, BLOCKED_RGB);
    assert!(
        orange > (blocked + 1) * 40,
        "the browser drew the stutter markers ({orange} marker pixels)"
    );
}

#[test]
fn report_refuses_what_is_not_a_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = dir.path().join("other.json");
    std::fs::write(&bogus, r#"{"schema": "something/else"}"#).expect("write");
    let out = agent(&["report", &bogus.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("not an nvbind.report/v1 or v2 document"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, r#"{"schema": "nvbind.report/v1", "agent": {"#).expect("write");
    let out = agent(&["report", &truncated.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a valid nvbind report"),
        "{}",
        stderr(&out)
    );

    let missing = dir.path().join("missing.json");
    let out = agent(&["report", &missing.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

/// A report written by the previous version (`nvbind.report/v1`, recorded by the agent of that
/// version: `record -- sh -c 'vkcube --c 120; sleep 0.3'`) is still read: summarised and drawn,
/// with the processes that made no frame (`sh`, `sleep`) folded as v2 does.
#[test]
fn a_v1_report_is_still_read() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/reports/v1-vkcube.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("chart.svg");
    let out = agent(&[
        "report",
        &fixture.display().to_string(),
        "--svg",
        &svg.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vkcube (pid "), "{text}");
    assert!(text.contains(": 120 frames from vulkan"), "{text}");
    assert!(
        text.contains("2 other processes made no frames"),
        "the shell and the sleep are folded: {text}"
    );
    assert!(!text.contains("sleep (pid"), "{text}");
    let doc = std::fs::read_to_string(&svg).expect("svg written");
    roxmltree::Document::parse(&doc).expect("well-formed SVG");
    assert!(doc.contains("vkcube (pid"), "the chart names the game");
}

/// Two runs of the test game compared: the same run against itself is "no change" on every row;
/// a run paced 40 % slower is worse on fps and the median frame time, by intervals the noise of
/// this machine cannot cross. The overlaid chart holds both runs.
#[test]
fn two_runs_compared_side_by_side() {
    require_root();
    let fast_dir = tempfile::tempdir().expect("tempdir");
    let slow_dir = tempfile::tempdir().expect("tempdir");
    let pace = |ms: &'static str| ["--frames", "300", "--interval-ms", ms];
    let fast = record_game(fast_dir.path(), &[], &pace("10"), || {});
    let slow = record_game(slow_dir.path(), &[], &pace("14"), || {});
    let (a, b) = (
        fast.out.display().to_string(),
        slow.out.display().to_string(),
    );

    let same = agent(&["report", &a, &a]);
    assert!(same.status.success(), "{}", stderr(&same));
    let text = String::from_utf8_lossy(&same.stdout);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" ms ") || l.contains(" fps ") || l.contains("/min "))
        .collect();
    assert!(rows.len() >= 7, "{text}");
    for row in &rows {
        assert!(
            row.contains("no change"),
            "a run against itself: {row}\n{text}"
        );
    }

    let svg = fast_dir.path().join("compare.svg");
    let svg_s = svg.display().to_string();
    let out = agent(&["report", &a, &b, "--svg", &svg_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |metric: &str| {
        text.lines()
            .find(|l| l.starts_with(metric))
            .unwrap_or_else(|| panic!("no {metric} row: {text}"))
            .to_string()
    };
    assert!(row("fps (average)").contains("worse ("), "{text}");
    assert!(row("frame time p50").contains("worse ("), "{text}");
    assert!(
        text.contains("moving-block bootstrap"),
        "the test is named: {text}"
    );
    let doc = std::fs::read_to_string(&svg).expect("svg written");
    let tree = roxmltree::Document::parse(&doc).expect("well-formed SVG");
    for colour in ["#1F77B4", "#FF7F0E"] {
        assert!(
            tree.descendants().any(|n| n.has_tag_name("polyline")
                && n.attribute("stroke")
                    .is_some_and(|s| s.eq_ignore_ascii_case(colour))),
            "run coloured {colour} drawn"
        );
    }

    // --pid picks a process of one report: refused with several, in one line.
    let refused = agent(&["report", &a, &b, "--pid", "1"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--pid"), "{}", stderr(&refused));
}
