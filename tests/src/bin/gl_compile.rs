//! An OpenGL game for nvbind's shader-compile tests: a GLX frame loop on the test's X server
//! (llvmpipe here) that, every `--compile-every` frames, compiles and links a program from a
//! deliberately large fragment shader on the render thread, each batch's shader its own.
//!
//! It reaches the GL functions as most games do, through `glXGetProcAddressARB` (libglvnd's
//! dispatch stubs), or with `--exports` through libGL.so.1's exported symbols (a program linked
//! against libGL). Mesa keeps compiled programs in its on-disk shader cache
//! (`MESA_SHADER_CACHE_DIR`): a second run with the same directory finds them there, and its
//! compiles are short (the cache is Mesa's, so whether it held a program is for the caller to
//! infer).
//!
//! Ground truth in `--log`, one line per event, times on CLOCK_MONOTONIC, in the format of
//! `vk-compile`:
//! - `frame BEFORE AFTER`: just before and just after each `glXSwapBuffers`;
//! - `compile CALL TID START END 0 0 unknown`: each `glCompileShader` and `glLinkProgram` call
//!   (GL creates no pipelines, takes no cache argument and says nothing of a cache).

use std::{
    ffi::{c_char, c_void, CString},
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use libloading::Library;
use nvbind_tests::{gettid, monotonic_ns, with_ground_truth};

#[derive(Debug, Parser)]
struct Args {
    /// Frames to present.
    #[arg(long, default_value_t = 120)]
    frames: u32,
    /// Target frame interval in milliseconds.
    #[arg(long, default_value_t = 16.0)]
    interval_ms: f64,
    /// Every Nth frame (not the first) compiles and links a program before it presents (0:
    /// never).
    #[arg(long, default_value_t = 0)]
    compile_every: u32,
    /// Operations in each fragment shader: what makes a program expensive to build.
    #[arg(long, default_value_t = 1500)]
    shader_ops: u32,
    /// Call libGL.so.1's exported functions instead of those glXGetProcAddressARB returns.
    #[arg(long)]
    exports: bool,
    /// Where the ground truth goes.
    #[arg(long)]
    log: PathBuf,
}

type Display = *mut c_void;
type GlxContext = *mut c_void;
type Window = u64;

/// GLX attributes: RGBA, double-buffered (`GLX_RGBA`, `GLX_DOUBLEBUFFER`, `None`).
const VISUAL_ATTRIBUTES: [i32; 3] = [4, 5, 0];
const GL_FRAGMENT_SHADER: u32 = 0x8B30;
const GL_COMPILE_STATUS: u32 = 0x8B81;
const GL_LINK_STATUS: u32 = 0x8B82;
const GL_COLOR_BUFFER_BIT: u32 = 0x4000;

/// The GL and X functions the game calls.
struct Gl {
    create_shader: unsafe extern "C" fn(u32) -> u32,
    shader_source: unsafe extern "C" fn(u32, i32, *const *const c_char, *const i32),
    compile_shader: unsafe extern "C" fn(u32),
    get_shader_iv: unsafe extern "C" fn(u32, u32, *mut i32),
    create_program: unsafe extern "C" fn() -> u32,
    attach_shader: unsafe extern "C" fn(u32, u32),
    link_program: unsafe extern "C" fn(u32),
    get_program_iv: unsafe extern "C" fn(u32, u32, *mut i32),
    delete_shader: unsafe extern "C" fn(u32),
    delete_program: unsafe extern "C" fn(u32),
    clear_color: unsafe extern "C" fn(f32, f32, f32, f32),
    clear: unsafe extern "C" fn(u32),
    swap_buffers: unsafe extern "C" fn(Display, Window),
}

impl Gl {
    /// Every function, from libGL's exports or from glXGetProcAddressARB.
    ///
    /// # Safety
    /// `gl` must be libGL.so.1 (the types are OpenGL's and GLX's).
    unsafe fn load(gl: &Library, exports: bool) -> Result<Gl> {
        let get_proc: libloading::Symbol<unsafe extern "C" fn(*const c_char) -> *mut c_void> =
            gl.get(b"glXGetProcAddressARB\0")?;
        let find = |name: &str| -> Result<*mut c_void> {
            let c_name = CString::new(name)?;
            let address = if exports {
                *gl.get::<*mut c_void>(c_name.as_bytes_with_nul())
                    .with_context(|| format!("libGL.so.1 does not export {name}"))?
            } else {
                get_proc(c_name.as_ptr())
            };
            if address.is_null() {
                bail!("no {name}");
            }
            Ok(address)
        };
        macro_rules! function {
            ($name:literal) => {
                as_function(find($name)?)
            };
        }
        Ok(Gl {
            create_shader: function!("glCreateShader"),
            shader_source: function!("glShaderSource"),
            compile_shader: function!("glCompileShader"),
            get_shader_iv: function!("glGetShaderiv"),
            create_program: function!("glCreateProgram"),
            attach_shader: function!("glAttachShader"),
            link_program: function!("glLinkProgram"),
            get_program_iv: function!("glGetProgramiv"),
            delete_shader: function!("glDeleteShader"),
            delete_program: function!("glDeleteProgram"),
            clear_color: function!("glClearColor"),
            clear: function!("glClear"),
            swap_buffers: function!("glXSwapBuffers"),
        })
    }
}

/// A function pointer of type `F` at `address`.
///
/// # Safety
/// `F` must be a function pointer type matching the function at `address`.
unsafe fn as_function<F: Copy>(address: *mut c_void) -> F {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
    std::mem::transmute_copy(&address)
}

fn main() -> Result<()> {
    let args = Args::parse();
    with_ground_truth(&args.log, |log| run(&args, log))
}

/// The fragment shader of batch `batch`: `ops` dependent operations with constants of its own
/// (the same in every run, so a second run finds it in Mesa's cache).
fn fragment_glsl(batch: u32, ops: u32) -> String {
    let seed = 1.0 + batch as f32 / 64.0;
    let mut body = String::new();
    for i in 0..ops {
        let k = seed + i as f32 / 4096.0;
        let _ = writeln!(
            body,
            "    v = sin(v * {k:.6} + u) * cos(v + {:.6});",
            k / 3.0
        );
    }
    format!(
        "#version 130\nuniform float u;\nvoid main() {{\n    float v = gl_FragCoord.x * {seed:.6} + u;\n{body}    gl_FragColor = vec4(v, v * 0.5, 1.0 - v, 1.0);\n}}\n"
    )
}

/// Times `call` and logs it as `name`.
fn timed(log: &mut String, name: &str, call: impl FnOnce()) {
    let start = monotonic_ns();
    call();
    let end = monotonic_ns();
    let _ = writeln!(log, "compile {name} {} {start} {end} 0 0 unknown", gettid());
}

/// Compiles and links one program from `source`; logs both calls.
///
/// # Safety
/// A GL context must be current on this thread.
unsafe fn build(gl: &Gl, source: &str, log: &mut String) -> Result<u32> {
    let source = CString::new(source)?;
    let shader = (gl.create_shader)(GL_FRAGMENT_SHADER);
    (gl.shader_source)(shader, 1, &source.as_ptr(), std::ptr::null());
    timed(log, "glCompileShader", || (gl.compile_shader)(shader));
    let mut ok = 0;
    (gl.get_shader_iv)(shader, GL_COMPILE_STATUS, &mut ok);
    if ok == 0 {
        bail!("the fragment shader did not compile");
    }
    let program = (gl.create_program)();
    (gl.attach_shader)(program, shader);
    timed(log, "glLinkProgram", || (gl.link_program)(program));
    (gl.get_program_iv)(program, GL_LINK_STATUS, &mut ok);
    (gl.delete_shader)(shader);
    if ok == 0 {
        bail!("the program did not link");
    }
    Ok(program)
}

fn run(args: &Args, log: &mut String) -> Result<()> {
    // SAFETY: loading system libraries; every symbol's type follows Xlib, GLX 1.4 and GL 2.0,
    // and every GL call is made with the context current on this thread.
    unsafe {
        let x11 = Library::new("libX11.so.6").context("cannot load libX11.so.6")?;
        let libgl = Library::new("libGL.so.1").context("cannot load libGL.so.1")?;
        let open: libloading::Symbol<unsafe extern "C" fn(*const c_char) -> Display> =
            x11.get(b"XOpenDisplay\0")?;
        let default_screen: libloading::Symbol<unsafe extern "C" fn(Display) -> i32> =
            x11.get(b"XDefaultScreen\0")?;
        let root_window: libloading::Symbol<unsafe extern "C" fn(Display, i32) -> Window> =
            x11.get(b"XRootWindow\0")?;
        let create_window: libloading::Symbol<
            unsafe extern "C" fn(Display, Window, i32, i32, u32, u32, u32, u64, u64) -> Window,
        > = x11.get(b"XCreateSimpleWindow\0")?;
        let map_window: libloading::Symbol<unsafe extern "C" fn(Display, Window) -> i32> =
            x11.get(b"XMapWindow\0")?;
        let destroy_window: libloading::Symbol<unsafe extern "C" fn(Display, Window) -> i32> =
            x11.get(b"XDestroyWindow\0")?;
        let close: libloading::Symbol<unsafe extern "C" fn(Display) -> i32> =
            x11.get(b"XCloseDisplay\0")?;
        let choose_visual: libloading::Symbol<
            unsafe extern "C" fn(Display, i32, *const i32) -> *mut c_void,
        > = libgl.get(b"glXChooseVisual\0")?;
        let create_context: libloading::Symbol<
            unsafe extern "C" fn(Display, *mut c_void, GlxContext, i32) -> GlxContext,
        > = libgl.get(b"glXCreateContext\0")?;
        let make_current: libloading::Symbol<
            unsafe extern "C" fn(Display, Window, GlxContext) -> i32,
        > = libgl.get(b"glXMakeCurrent\0")?;
        let destroy_context: libloading::Symbol<unsafe extern "C" fn(Display, GlxContext)> =
            libgl.get(b"glXDestroyContext\0")?;

        let display = open(std::ptr::null());
        if display.is_null() {
            bail!("cannot open the X display (is DISPLAY set?)");
        }
        let screen = default_screen(display);
        let visual = choose_visual(display, screen, VISUAL_ATTRIBUTES.as_ptr());
        if visual.is_null() {
            bail!("no double-buffered RGBA visual");
        }
        let context = create_context(display, visual, std::ptr::null_mut(), 1);
        if context.is_null() {
            bail!("glXCreateContext failed");
        }
        let window = create_window(
            display,
            root_window(display, screen),
            0,
            0,
            320,
            240,
            0,
            0,
            0,
        );
        map_window(display, window);
        if make_current(display, window, context) == 0 {
            bail!("glXMakeCurrent failed");
        }
        let gl = Gl::load(&libgl, args.exports)?;

        let batches = match args.compile_every {
            0 => 0,
            every => args.frames.div_ceil(every),
        };
        let sources: Vec<String> = (0..batches)
            .map(|b| fragment_glsl(b, args.shader_ops))
            .collect();
        let mut programs = Vec::new();
        let interval = Duration::from_secs_f64(args.interval_ms / 1e3);
        let mut next = Instant::now();
        for frame in 0..args.frames {
            if frame > 0 && args.compile_every > 0 && frame % args.compile_every == 0 {
                let source = &sources[(frame / args.compile_every) as usize];
                programs.push(build(&gl, source, log)?);
            }
            let shade = (frame % 60) as f32 / 60.0;
            (gl.clear_color)(shade, 0.2, 1.0 - shade, 1.0);
            (gl.clear)(GL_COLOR_BUFFER_BIT);
            let before = monotonic_ns();
            (gl.swap_buffers)(display, window);
            let after = monotonic_ns();
            let _ = writeln!(log, "frame {before} {after}");
            next += interval;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        for program in programs {
            (gl.delete_program)(program);
        }
        // Releasing the context lets Mesa finish writing its disk cache.
        make_current(display, 0, std::ptr::null_mut());
        destroy_context(display, context);
        destroy_window(display, window);
        close(display);
    }
    Ok(())
}
