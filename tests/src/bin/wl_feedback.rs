//! A Wayland client that presents through the real `eglSwapBuffers` (Mesa's EGL on the
//! compositor's Wayland socket) and asks the compositor, for every frame, what became of it
//! (`wp_presentation` feedback: presented at which time, or discarded). That feedback is the
//! compositor's own ground truth, against which the agent's join of a game's frames to the
//! compositor's flips is checked.
//!
//! Writes JSON to `--out`: the presentation clock, and per frame the entry and return time of its
//! `eglSwapBuffers` (CLOCK_MONOTONIC ns, the clock the agent's probes read) and the compositor's
//! verdict.
//!
//! Kinds of game it plays: `--swap-interval 1` (the default) waits for the compositor like a
//! vsynced game; `--swap-interval 0 --frames-per-refresh` … presents faster than the display;
//! `--frame-ms` makes each frame take at least that long (a game that cannot keep up).

use std::{
    collections::BTreeMap,
    ffi::c_void,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use libloading::{Library, Symbol};
use serde_json::json;
use wayland_client::{
    globals::{registry_queue_init, GlobalListContents},
    protocol::{wl_compositor, wl_registry, wl_surface},
    Connection, Dispatch, Proxy, QueueHandle,
};
use wayland_protocols::{
    wp::presentation_time::client::{wp_presentation, wp_presentation_feedback},
    xdg::shell::client::{xdg_surface, xdg_toplevel, xdg_wm_base},
};

#[derive(Parser)]
#[command(about = "Present through EGL on Wayland and record wp_presentation feedback")]
struct Args {
    /// Frames to present.
    #[arg(long, default_value_t = 300)]
    frames: u32,
    /// eglSwapInterval: 1 waits for the compositor's frame callback, 0 does not.
    #[arg(long, default_value_t = 1)]
    swap_interval: i32,
    /// The least time a frame takes, ms (slept before its present; 0: none).
    #[arg(long, default_value_t = 0.0)]
    frame_ms: f64,
    /// Where to write the JSON record.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Surface size.
    #[arg(long, default_value_t = 256)]
    size: i32,
}

/// What the compositor said about one frame.
#[derive(Debug, Clone, Copy, Default)]
enum Verdict {
    #[default]
    Pending,
    Presented {
        display_ns: u64,
        refresh_ns: u32,
        seq: u64,
        flags: u32,
    },
    Discarded,
}

#[derive(Default)]
struct State {
    clock_id: Option<u32>,
    configured: bool,
    closed: bool,
    verdicts: BTreeMap<u32, Verdict>,
}

impl Dispatch<wl_registry::WlRegistry, GlobalListContents> for State {
    fn event(
        _: &mut Self,
        _: &wl_registry::WlRegistry,
        _: wl_registry::Event,
        _: &GlobalListContents,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

impl Dispatch<wl_compositor::WlCompositor, ()> for State {
    fn event(
        _: &mut Self,
        _: &wl_compositor::WlCompositor,
        _: wl_compositor::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

impl Dispatch<wl_surface::WlSurface, ()> for State {
    fn event(
        _: &mut Self,
        _: &wl_surface::WlSurface,
        _: wl_surface::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

impl Dispatch<xdg_wm_base::XdgWmBase, ()> for State {
    fn event(
        _: &mut Self,
        base: &xdg_wm_base::XdgWmBase,
        event: xdg_wm_base::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_wm_base::Event::Ping { serial } = event {
            base.pong(serial);
        }
    }
}

impl Dispatch<xdg_surface::XdgSurface, ()> for State {
    fn event(
        state: &mut Self,
        surface: &xdg_surface::XdgSurface,
        event: xdg_surface::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_surface::Event::Configure { serial } = event {
            surface.ack_configure(serial);
            state.configured = true;
        }
    }
}

impl Dispatch<xdg_toplevel::XdgToplevel, ()> for State {
    fn event(
        state: &mut Self,
        _: &xdg_toplevel::XdgToplevel,
        event: xdg_toplevel::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_toplevel::Event::Close = event {
            state.closed = true;
        }
    }
}

impl Dispatch<wp_presentation::WpPresentation, ()> for State {
    fn event(
        state: &mut Self,
        _: &wp_presentation::WpPresentation,
        event: wp_presentation::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let wp_presentation::Event::ClockId { clk_id } = event {
            state.clock_id = Some(clk_id);
        }
    }
}

impl Dispatch<wp_presentation_feedback::WpPresentationFeedback, u32> for State {
    fn event(
        state: &mut Self,
        _: &wp_presentation_feedback::WpPresentationFeedback,
        event: wp_presentation_feedback::Event,
        frame: &u32,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        let verdict = match event {
            wp_presentation_feedback::Event::Presented {
                tv_sec_hi,
                tv_sec_lo,
                tv_nsec,
                refresh,
                seq_hi,
                seq_lo,
                flags,
            } => {
                let secs = (u64::from(tv_sec_hi) << 32) | u64::from(tv_sec_lo);
                Verdict::Presented {
                    display_ns: secs * 1_000_000_000 + u64::from(tv_nsec),
                    refresh_ns: refresh,
                    seq: (u64::from(seq_hi) << 32) | u64::from(seq_lo),
                    flags: flags.into(),
                }
            }
            wp_presentation_feedback::Event::Discarded => Verdict::Discarded,
            _ => return,
        };
        state.verdicts.insert(*frame, verdict);
    }
}

type EglDisplay = *mut c_void;
type EglSurface = *mut c_void;
type EglConfig = *mut c_void;
type EglContext = *mut c_void;

const EGL_PLATFORM_WAYLAND_KHR: u32 = 0x31D8;
const EGL_SURFACE_TYPE: i32 = 0x3033;
const EGL_WINDOW_BIT: i32 = 0x0004;
const EGL_RENDERABLE_TYPE: i32 = 0x3040;
const EGL_OPENGL_ES2_BIT: i32 = 0x0004;
const EGL_RED_SIZE: i32 = 0x3024;
const EGL_GREEN_SIZE: i32 = 0x3023;
const EGL_BLUE_SIZE: i32 = 0x3022;
const EGL_CONTEXT_CLIENT_VERSION: i32 = 0x3098;
const EGL_OPENGL_ES_API: u32 = 0x30A0;
const EGL_NONE: i32 = 0x3038;
const GL_COLOR_BUFFER_BIT: u32 = 0x4000;

/// Mesa's EGL on a Wayland surface, through `libEGL.so.1` and `libwayland-egl.so.1` (loaded at
/// run time: the machine building the tests needs neither).
struct Egl {
    _egl: Library,
    _wayland_egl: Library,
    display: EglDisplay,
    surface: EglSurface,
    swap: unsafe extern "C" fn(EglDisplay, EglSurface) -> u32,
    clear_color: unsafe extern "C" fn(f32, f32, f32, f32),
    clear: unsafe extern "C" fn(u32),
}

impl Egl {
    /// # Safety
    /// `display` and `surface` are live `wl_display*` and `wl_surface*` of this connection.
    unsafe fn open(
        display: *mut c_void,
        surface: *mut c_void,
        size: i32,
        interval: i32,
    ) -> Result<Egl> {
        let egl = Library::new("libEGL.so.1").context("cannot load libEGL.so.1")?;
        let wayland_egl =
            Library::new("libwayland-egl.so.1").context("cannot load libwayland-egl.so.1")?;
        let window_create: Symbol<unsafe extern "C" fn(*mut c_void, i32, i32) -> *mut c_void> =
            wayland_egl.get(b"wl_egl_window_create\0")?;
        let get_platform_display: Symbol<
            unsafe extern "C" fn(u32, *mut c_void, *const isize) -> EglDisplay,
        > = egl.get(b"eglGetPlatformDisplay\0")?;
        let initialize: Symbol<unsafe extern "C" fn(EglDisplay, *mut i32, *mut i32) -> u32> =
            egl.get(b"eglInitialize\0")?;
        let bind_api: Symbol<unsafe extern "C" fn(u32) -> u32> = egl.get(b"eglBindAPI\0")?;
        let choose: Symbol<
            unsafe extern "C" fn(EglDisplay, *const i32, *mut EglConfig, i32, *mut i32) -> u32,
        > = egl.get(b"eglChooseConfig\0")?;
        let create_context: Symbol<
            unsafe extern "C" fn(EglDisplay, EglConfig, EglContext, *const i32) -> EglContext,
        > = egl.get(b"eglCreateContext\0")?;
        let create_window: Symbol<
            unsafe extern "C" fn(EglDisplay, EglConfig, *mut c_void, *const i32) -> EglSurface,
        > = egl.get(b"eglCreateWindowSurface\0")?;
        let make_current: Symbol<
            unsafe extern "C" fn(EglDisplay, EglSurface, EglSurface, EglContext) -> u32,
        > = egl.get(b"eglMakeCurrent\0")?;
        let swap_interval: Symbol<unsafe extern "C" fn(EglDisplay, i32) -> u32> =
            egl.get(b"eglSwapInterval\0")?;
        let get_proc: Symbol<unsafe extern "C" fn(*const std::ffi::c_char) -> *mut c_void> =
            egl.get(b"eglGetProcAddress\0")?;
        let swap: Symbol<unsafe extern "C" fn(EglDisplay, EglSurface) -> u32> =
            egl.get(b"eglSwapBuffers\0")?;

        let dpy = get_platform_display(EGL_PLATFORM_WAYLAND_KHR, display, std::ptr::null());
        if dpy.is_null() {
            bail!("eglGetPlatformDisplay(EGL_PLATFORM_WAYLAND_KHR) failed");
        }
        let (mut major, mut minor) = (0, 0);
        if initialize(dpy, &mut major, &mut minor) == 0 {
            bail!("eglInitialize failed on the Wayland display");
        }
        bind_api(EGL_OPENGL_ES_API);
        let attributes = [
            EGL_SURFACE_TYPE,
            EGL_WINDOW_BIT,
            EGL_RENDERABLE_TYPE,
            EGL_OPENGL_ES2_BIT,
            EGL_RED_SIZE,
            8,
            EGL_GREEN_SIZE,
            8,
            EGL_BLUE_SIZE,
            8,
            EGL_NONE,
        ];
        let mut config: EglConfig = std::ptr::null_mut();
        let mut count = 0;
        if choose(dpy, attributes.as_ptr(), &mut config, 1, &mut count) == 0 || count < 1 {
            bail!("no EGL config with a window surface and GLES2");
        }
        let context_attributes = [EGL_CONTEXT_CLIENT_VERSION, 2, EGL_NONE];
        let context = create_context(
            dpy,
            config,
            std::ptr::null_mut(),
            context_attributes.as_ptr(),
        );
        if context.is_null() {
            bail!("eglCreateContext failed");
        }
        let window = window_create(surface, size, size);
        if window.is_null() {
            bail!("wl_egl_window_create failed");
        }
        let egl_surface = create_window(dpy, config, window, std::ptr::null());
        if egl_surface.is_null() {
            bail!("eglCreateWindowSurface failed");
        }
        if make_current(dpy, egl_surface, egl_surface, context) == 0 {
            bail!("eglMakeCurrent failed");
        }
        if swap_interval(dpy, interval) == 0 {
            bail!("eglSwapInterval({interval}) failed");
        }
        let clear_color = get_proc(c"glClearColor".as_ptr());
        let clear = get_proc(c"glClear".as_ptr());
        if clear_color.is_null() || clear.is_null() {
            bail!("no glClearColor/glClear from eglGetProcAddress");
        }
        Ok(Egl {
            swap: *swap,
            clear_color: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(f32, f32, f32, f32)>(
                clear_color,
            ),
            clear: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32)>(clear),
            display: dpy,
            surface: egl_surface,
            _egl: egl,
            _wayland_egl: wayland_egl,
        })
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() -> Result<()> {
    let args = Args::parse();
    let connection = Connection::connect_to_env()
        .context("cannot connect to the Wayland compositor (is WAYLAND_DISPLAY set?)")?;
    let (globals, mut queue) = registry_queue_init::<State>(&connection)
        .context("cannot list the compositor's globals")?;
    let qh = queue.handle();
    let compositor: wl_compositor::WlCompositor =
        globals.bind(&qh, 4..=5, ()).context("no wl_compositor")?;
    let wm_base: xdg_wm_base::XdgWmBase = globals.bind(&qh, 1..=2, ()).context("no xdg_wm_base")?;
    let presentation: wp_presentation::WpPresentation = globals
        .bind(&qh, 1..=1, ())
        .context("the compositor has no wp_presentation")?;
    let mut state = State::default();

    let surface = compositor.create_surface(&qh, ());
    let xdg = wm_base.get_xdg_surface(&surface, &qh, ());
    let toplevel = xdg.get_toplevel(&qh, ());
    toplevel.set_title("nvbind wl-feedback".into());
    surface.commit();
    while !state.configured {
        queue
            .blocking_dispatch(&mut state)
            .context("the compositor went away before configuring the window")?;
    }
    let clock_id = state.clock_id.unwrap_or(libc::CLOCK_MONOTONIC as u32);
    if clock_id != libc::CLOCK_MONOTONIC as u32 {
        bail!("the compositor presents on clock {clock_id}, not CLOCK_MONOTONIC");
    }

    // SAFETY: both pointers are this connection's live objects (libwayland's, the system
    // backend), and outlive the EGL surface (the process ends first).
    let egl = unsafe {
        Egl::open(
            connection.backend().display_ptr() as *mut c_void,
            surface.id().as_ptr() as *mut c_void,
            args.size,
            args.swap_interval,
        )?
    };

    let mut frames = Vec::with_capacity(args.frames as usize);
    let started = Instant::now();
    for i in 0..args.frames {
        if state.closed {
            break;
        }
        let frame_start = Instant::now();
        let shade = (i % 64) as f32 / 64.0;
        // SAFETY: the context is current on this thread.
        unsafe {
            (egl.clear_color)(shade, 0.3, 1.0 - shade, 1.0);
            (egl.clear)(GL_COLOR_BUFFER_BIT);
        }
        if args.frame_ms > 0.0 {
            let least = Duration::from_secs_f64(args.frame_ms / 1000.0);
            if let Some(left) = least.checked_sub(frame_start.elapsed()) {
                std::thread::sleep(left);
            }
        }
        // Asked before the swap: the feedback belongs to the next commit, which is the swap's.
        let _feedback = presentation.feedback(&surface, &qh, i);
        let entry_ns = monotonic_ns();
        // SAFETY: display and surface are live; the context is current.
        let taken = unsafe { (egl.swap)(egl.display, egl.surface) } != 0;
        let return_ns = monotonic_ns();
        if !taken {
            bail!("eglSwapBuffers failed at frame {i}");
        }
        frames.push((i, entry_ns, return_ns));
        connection.flush().ok();
        queue
            .dispatch_pending(&mut state)
            .context("dispatching the compositor's events")?;
    }
    let elapsed = started.elapsed();

    // Every frame's verdict comes with or before the next flip's; wait a few refreshes for the
    // last ones.
    let deadline = Instant::now() + Duration::from_secs(3);
    while state.verdicts.len() < frames.len() && Instant::now() < deadline {
        queue
            .roundtrip(&mut state)
            .context("waiting for the last frames' feedback")?;
        std::thread::sleep(Duration::from_millis(20));
    }

    let records: Vec<_> = frames
        .iter()
        .map(|&(i, entry_ns, return_ns)| {
            let verdict = state.verdicts.get(&i).copied().unwrap_or_default();
            match verdict {
                Verdict::Presented {
                    display_ns,
                    refresh_ns,
                    seq,
                    flags,
                } => json!({
                    "frame": i, "entry_ns": entry_ns, "return_ns": return_ns,
                    "verdict": "presented", "display_ns": display_ns,
                    "refresh_ns": refresh_ns, "seq": seq, "flags": flags,
                }),
                Verdict::Discarded => json!({
                    "frame": i, "entry_ns": entry_ns, "return_ns": return_ns,
                    "verdict": "discarded",
                }),
                Verdict::Pending => json!({
                    "frame": i, "entry_ns": entry_ns, "return_ns": return_ns,
                    "verdict": "pending",
                }),
            }
        })
        .collect();
    let presented = records
        .iter()
        .filter(|r| r["verdict"] == "presented")
        .count();
    let discarded = records
        .iter()
        .filter(|r| r["verdict"] == "discarded")
        .count();
    let out = json!({
        "pid": std::process::id(),
        "clock_id": clock_id,
        "swap_interval": args.swap_interval,
        "frame_ms": args.frame_ms,
        "seconds": elapsed.as_secs_f64(),
        "presented": presented,
        "discarded": discarded,
        "frames": records,
    });
    let text = serde_json::to_string_pretty(&out)?;
    let partial = args.out.with_extension("partial");
    std::fs::write(&partial, text)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wl-feedback: {} frames in {:.2} s: {presented} presented, {discarded} discarded",
        frames.len(),
        elapsed.as_secs_f64()
    );
    Ok(())
}
