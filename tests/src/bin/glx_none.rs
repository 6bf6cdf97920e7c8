//! Calls `glXSwapBuffers` with no drawable (`None`), as a buggy or hostile program can: X answers
//! each call with a GLXBadDrawable error (ignored here), and nvbind must count none of them as a
//! frame. Needs an X server (`DISPLAY`).

use std::{ffi::c_void, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Parser;
use libloading::{Library, Symbol};

#[derive(Debug, Parser)]
struct Args {
    /// Calls to make.
    #[arg(long, default_value_t = 100)]
    calls: u32,
    /// Time between calls, in milliseconds.
    #[arg(long, default_value_t = 5.0)]
    interval_ms: f64,
}

type Display = *mut c_void;

/// Swallows X errors: the default handler would end the program at the first one.
extern "C" fn ignore_x_error(_display: Display, _event: *mut c_void) -> i32 {
    0
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: loading system libraries; symbol types follow Xlib and GLX 1.4.
    unsafe {
        let x11 = Library::new("libX11.so.6").context("cannot load libX11.so.6")?;
        let gl = Library::new("libGL.so.1").context("cannot load libGL.so.1")?;
        let open: Symbol<unsafe extern "C" fn(*const i8) -> Display> =
            x11.get(b"XOpenDisplay\0")?;
        let set_handler: Symbol<
            unsafe extern "C" fn(Option<extern "C" fn(Display, *mut c_void) -> i32>) -> *mut c_void,
        > = x11.get(b"XSetErrorHandler\0")?;
        let sync: Symbol<unsafe extern "C" fn(Display, i32) -> i32> = x11.get(b"XSync\0")?;
        let swap: Symbol<unsafe extern "C" fn(Display, u64)> = gl.get(b"glXSwapBuffers\0")?;
        let display = open(std::ptr::null());
        if display.is_null() {
            bail!("cannot open the X display (is DISPLAY set?)");
        }
        set_handler(Some(ignore_x_error));
        for _ in 0..args.calls {
            swap(display, 0);
            sync(display, 0);
            std::thread::sleep(Duration::from_secs_f64(args.interval_ms / 1000.0));
        }
    }
    println!(
        "glx-none: {} calls of glXSwapBuffers(display, None)",
        args.calls
    );
    Ok(())
}
