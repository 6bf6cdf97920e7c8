//! The soak: the daemon for a long while (30 minutes by default) under everything a gaming host
//! and its unprivileged users throw at it at once, with its RSS and fds sampled every 10 s.
//!
//! - Two games starting and stopping every few seconds (the synthetic game, 1 to 3 s each),
//!   each churning through two threads a frame; every one must get its session report.
//! - WebSocket clients coming and going (a stream of a running game for 1 to 4 s), and a
//!   `/api/processes` poll a second.
//! - A SIGHUP every 30 s (the config reloaded).
//! - As nobody: 40 idle connections held for 20 s at a time, 300 requests as fast as one curl
//!   makes them every 10 s, a process whose every present fails, and 40 copies of libEGL mapped
//!   for 20 s at a time.
//!
//! Verdict: RSS and fds flat (the last third's mean within 10 % of the first third's), RSS under
//! 100 MB, fds under half the daemon's limit, and no lost report.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{sleep, spawn, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;

use super::daemon::{memory, start_daemon};
use crate::util::step;

const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// What the soak's parts share.
struct Soak {
    dir: PathBuf,
    game: PathBuf,
    port: u16,
    stop: AtomicBool,
    /// Pids of the games started (whose sessions must all be written).
    games: Mutex<Vec<u32>>,
    /// Pids of games running now (for the WebSocket clients).
    running_games: Mutex<Vec<u32>>,
    streams: AtomicU64,
    attacks: AtomicU64,
}

impl Soak {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `d`, or less when the soak stops meanwhile.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopped() && Instant::now() < until {
            sleep(Duration::from_millis(100));
        }
    }
}

/// One sample of the daemon.
struct Sample {
    rss: u64,
    fds: usize,
}

pub fn bench(agent: &Path, game: &Path, copies: &Path, dir: &Path, minutes: u64) -> Result<()> {
    if minutes == 0 {
        bail!("--soak-minutes must be at least 1");
    }
    step(&format!(
        "soak: the daemon for {minutes} min with games coming and going, thread churn, streams, \
         SIGHUPs and an unprivileged user's attacks; RSS and fds every 10 s"
    ));
    let dir = dir.join("soak");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    // Every session kept: a pruned one would count as lost.
    let (running, daemon_pid, port) = start_daemon(agent, &dir, "keep = 0\n")?;
    // systemd's default: what the daemon runs with on a host.
    pin_fd_limit(daemon_pid, 1024)?;
    let fd_limit = fd_limit(daemon_pid)?;
    let soak = Arc::new(Soak {
        dir: dir.clone(),
        game: game.to_path_buf(),
        port,
        stop: AtomicBool::new(false),
        games: Mutex::default(),
        running_games: Mutex::default(),
        streams: AtomicU64::new(0),
        attacks: AtomicU64::new(0),
    });
    let mut parts: Vec<JoinHandle<()>> = Vec::new();
    for slot in 0..2 {
        let soak = Arc::clone(&soak);
        parts.push(spawn(move || games(&soak, slot)));
    }
    {
        let soak = Arc::clone(&soak);
        parts.push(spawn(move || streams(&soak)));
    }
    {
        let soak = Arc::clone(&soak);
        parts.push(spawn(move || sighups(&soak, daemon_pid)));
    }
    {
        let soak = Arc::clone(&soak);
        let copies = copies.to_path_buf();
        parts.push(spawn(move || attacks(&soak, &copies)));
    }

    let started = Instant::now();
    let total = Duration::from_secs(minutes * 60);
    let mut samples = Vec::new();
    let mut csv = fs::File::create(dir.join("samples.csv"))?;
    writeln!(csv, "t_s,rss_bytes,fds")?;
    println!("      t     RSS      fds  games  streams  attacks");
    while started.elapsed() < total {
        sleep(SAMPLE_EVERY.min(total.saturating_sub(started.elapsed())));
        let (rss, _) = memory(daemon_pid)?;
        let fds = fs::read_dir(format!("/proc/{daemon_pid}/fd"))?.count();
        let at_s = started.elapsed().as_secs_f64();
        writeln!(csv, "{at_s:.1},{rss},{fds}")?;
        println!(
            "  {:>5.0}s {:>6.1} MB {:>5} {:>6} {:>8} {:>8}",
            at_s,
            rss as f64 / 1e6,
            fds,
            soak.games.lock().map(|g| g.len()).unwrap_or(0),
            soak.streams.load(Ordering::Relaxed),
            soak.attacks.load(Ordering::Relaxed)
        );
        samples.push(Sample { rss, fds });
    }
    soak.stop.store(true, Ordering::Relaxed);
    for part in parts {
        let _ = part.join();
    }
    // The last games' sessions are written within a few seconds of their exit.
    sleep(Duration::from_secs(5));
    let log = fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    drop(running);
    summarise(&soak, &samples, fd_limit, &log)
}

/// Sets a process's fd limit (soft and hard).
fn pin_fd_limit(pid: u32, limit: u64) -> Result<()> {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit reads a valid rlimit; the old limit is not asked for.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlimit,
            std::ptr::null_mut(),
        )
    };
    if rc != 0 {
        anyhow::bail!("prlimit: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The daemon's soft fd limit.
fn fd_limit(pid: u32) -> Result<usize> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .context("the daemon's fd limit")
}

fn summarise(soak: &Soak, samples: &[Sample], fd_limit: usize, log: &str) -> Result<()> {
    let third = (samples.len() / 3).max(1);
    let mean = |s: &[Sample], f: fn(&Sample) -> f64| s.iter().map(f).sum::<f64>() / s.len() as f64;
    let (first, last) = (&samples[..third], &samples[samples.len() - third..]);
    let rss = |s: &Sample| s.rss as f64;
    let fds = |s: &Sample| s.fds as f64;
    let max_rss = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let games = soak.games.lock().map(|g| g.clone()).unwrap_or_default();
    let reports: Vec<String> = fs::read_dir(soak.dir.join("reports"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    let lost: Vec<u32> = games
        .iter()
        .copied()
        .filter(|pid| !reports.iter().any(|r| r.contains(&format!("-{pid}."))))
        .collect();
    let refusals = log.lines().filter(|l| l.contains("refused")).count();
    let flat = |a: f64, b: f64| (b - a).abs() <= 0.1 * a;
    println!();
    println!(
        "  RSS: first third {:.1} MB, last third {:.1} MB ({}), most {:.1} MB ({})",
        mean(first, rss) / 1e6,
        mean(last, rss) / 1e6,
        if flat(mean(first, rss), mean(last, rss)) {
            "flat"
        } else {
            "NOT flat"
        },
        max_rss as f64 / 1e6,
        if max_rss < 100_000_000 {
            "under 100 MB"
        } else {
            "OVER 100 MB"
        }
    );
    println!(
        "  fds: first third {:.1}, last third {:.1} ({}), most {max_fds} of {fd_limit} ({})",
        mean(first, fds),
        mean(last, fds),
        if flat(mean(first, fds), mean(last, fds)) {
            "flat"
        } else {
            "NOT flat"
        },
        if max_fds * 2 < fd_limit {
            "under half"
        } else {
            "OVER half"
        }
    );
    println!(
        "  games: {} started, {} sessions written, {} lost{}; streams: {}; attack rounds: {}; \
         refusals logged: {refusals}",
        games.len(),
        games.len() - lost.len(),
        lost.len(),
        if lost.is_empty() {
            String::new()
        } else {
            format!(" ({lost:?})")
        },
        soak.streams.load(Ordering::Relaxed),
        soak.attacks.load(Ordering::Relaxed),
    );
    let mut failed = Vec::new();
    if !flat(mean(first, rss), mean(last, rss)) || !flat(mean(first, fds), mean(last, fds)) {
        failed.push("RSS or fds not flat");
    }
    if max_rss >= 100_000_000 {
        failed.push("RSS over 100 MB");
    }
    if max_fds * 2 >= fd_limit {
        failed.push("fds over half the limit");
    }
    if !lost.is_empty() {
        failed.push("sessions lost");
    }
    if !failed.is_empty() {
        bail!("the soak failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Games one after the other in one slot: 1 to 3 s each at 200 fps, two threads churned a frame.
fn games(soak: &Soak, slot: u64) {
    let mut round = 0u64;
    while !soak.stopped() {
        let frames = 200 + 200 * ((round + slot) % 3);
        let truth = soak.dir.join(format!("game-{slot}-{round}.truth"));
        let child = Command::new(&soak.game)
            .args(["--frames", &frames.to_string(), "--interval-ms", "5"])
            .args(["--churn-threads", "2", "--truth"])
            .arg(&truth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            soak.pause(Duration::from_secs(1));
            continue;
        };
        let pid = child.id();
        if let Ok(mut running) = soak.running_games.lock() {
            running.push(pid);
        }
        let _ = child.wait();
        if let Ok(mut running) = soak.running_games.lock() {
            running.retain(|p| *p != pid);
        }
        let _ = fs::remove_file(&truth);
        // Only games that ran to the end count: one stopped with the soak may not be written.
        if !soak.stopped() {
            if let Ok(mut games) = soak.games.lock() {
                games.push(pid);
            }
        }
        round += 1;
        soak.pause(Duration::from_millis(500));
    }
}

/// WebSocket streams of running games, 1 to 4 s each, and an API poll a second.
fn streams(soak: &Soak) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut round = 0u64;
    while !soak.stopped() {
        let pid = soak
            .running_games
            .lock()
            .ok()
            .and_then(|g| g.first().copied());
        if let Some(pid) = pid {
            let url = format!("ws://127.0.0.1:{}/metrics/{pid}?interval_ms=100", soak.port);
            let hold = Duration::from_secs(1 + round % 4);
            runtime.block_on(async {
                if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await {
                    let until = Instant::now() + hold;
                    while Instant::now() < until {
                        match tokio::time::timeout(hold, ws.next()).await {
                            Ok(Some(Ok(_))) => {}
                            _ => break,
                        }
                    }
                    let _ = ws.close(None).await;
                }
            });
            soak.streams.fetch_add(1, Ordering::Relaxed);
        }
        let _ = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/api/processes", soak.port))
            .status();
        round += 1;
        soak.pause(Duration::from_secs(1));
    }
}

/// A SIGHUP every 30 s.
fn sighups(soak: &Soak, daemon_pid: u32) {
    while !soak.stopped() {
        soak.pause(Duration::from_secs(30));
        // SAFETY: signalling the daemon this soak started.
        unsafe { libc::kill(daemon_pid as libc::pid_t, libc::SIGHUP) };
    }
}

/// Runs `program` as nobody.
fn as_nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
    c
}

/// An unprivileged user's attacks, round after round: idle connections, a request flood, a
/// process whose presents all fail, library copies.
fn attacks(soak: &Soak, copies: &Path) {
    let copies_dir = soak.dir.join("copies");
    let _ = fs::create_dir_all(&copies_dir);
    // Nobody's own folder for its copies.
    let _ = std::os::unix::fs::chown(&copies_dir, Some(65534), Some(65534));
    let egl = [
        "/usr/lib/x86_64-linux-gnu/libEGL.so.1",
        "/usr/lib64/libEGL.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    while !soak.stopped() {
        let mut held: Vec<Child> = Vec::new();
        // 40 idle connections, held until the round ends.
        held.extend(
            as_nobody("bash")
                .arg("-c")
                .arg(format!(
                    "for i in $(seq 40); do exec {{fd}}<>/dev/tcp/127.0.0.1/{}; done; sleep 20",
                    soak.port
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn(),
        );
        // A process whose every present fails.
        held.extend(
            as_nobody(&soak.game.display().to_string())
                .args(["--no-surface", "--frames", "20000", "--interval-ms", "1"])
                .arg("--truth")
                .arg("/dev/null")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn(),
        );
        // 40 copies of libEGL, mapped.
        if let Some(egl) = egl {
            let round_dir = copies_dir.join(soak.attacks.load(Ordering::Relaxed).to_string());
            held.extend(
                as_nobody(&copies.display().to_string())
                    .args(["40", egl])
                    .arg(&round_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn(),
            );
        }
        // Requests as fast as one curl makes them, twice in the round.
        let url = format!("http://127.0.0.1:{}/api/gpu/status", soak.port);
        for _ in 0..2 {
            let mut flood = as_nobody("curl");
            flood.args(["-s", "--max-time", "10"]);
            for _ in 0..300 {
                flood.args(["-o", "/dev/null", url.as_str()]);
            }
            let _ = flood.stdout(Stdio::null()).stderr(Stdio::null()).status();
            soak.pause(Duration::from_secs(10));
        }
        for mut c in held {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ =
            fs::remove_dir_all(copies_dir.join(soak.attacks.load(Ordering::Relaxed).to_string()));
        soak.attacks.fetch_add(1, Ordering::Relaxed);
    }
}
