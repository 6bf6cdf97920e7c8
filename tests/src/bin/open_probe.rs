//! `open-probe [--join CGROUP_PROCS_FILE]... PATH...`: joins the given cgroups (by writing its own
//! pid), then opens each path read-write and prints one JSON object: path → "ok" or the errno's
//! name (`EPERM`: the device policy denied it; `ENXIO`: allowed, but no driver behind the node).
//! The binding tests run it inside the cgroups they bind.
//!
//! `--time N` (before the paths) opens each path N times instead and prints the mean cost of
//! one `open()` in nanoseconds (`cargo xtask bench` uses it for the device policy's cost).

use std::{collections::BTreeMap, fs::OpenOptions, io::Write};

fn errno_name(code: i32) -> String {
    match code {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENXIO => "ENXIO".into(),
        libc::ENODEV => "ENODEV".into(),
        libc::ENOENT => "ENOENT".into(),
        other => format!("errno {other}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut results = BTreeMap::new();
    let mut repeat: Option<u32> = None;
    while let Some(arg) = args.next() {
        if arg == "--time" {
            repeat = args.next().and_then(|n| n.parse().ok());
            if repeat.is_none() {
                eprintln!("open-probe: --time needs a count");
                std::process::exit(2);
            }
            continue;
        }
        if arg == "--join" {
            let Some(procs) = args.next() else {
                eprintln!("open-probe: --join needs a cgroup.procs path");
                std::process::exit(2);
            };
            let joined = OpenOptions::new()
                .write(true)
                .open(&procs)
                .and_then(|mut f| f.write_all(std::process::id().to_string().as_bytes()));
            if let Err(e) = joined {
                eprintln!("open-probe: cannot join {procs}: {e}");
                std::process::exit(2);
            }
            continue;
        }
        let open = || match OpenOptions::new().read(true).write(true).open(&arg) {
            Ok(_) => "ok".to_string(),
            Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
        };
        let outcome = match repeat {
            None => serde_json::Value::from(open()),
            Some(n) => {
                let started = std::time::Instant::now();
                for _ in 0..n {
                    let file = OpenOptions::new().read(true).write(true).open(&arg);
                    std::hint::black_box(file.is_ok());
                }
                let ns = started.elapsed().as_nanos() as f64 / f64::from(n.max(1));
                serde_json::json!({ "outcome": open(), "ns_per_open": ns })
            }
        };
        results.insert(arg, outcome);
    }
    match serde_json::to_string(&results) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("open-probe: {e}");
            std::process::exit(2);
        }
    }
}
