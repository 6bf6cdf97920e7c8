//! Finding OpenGL's shader compile functions as programs reach them, before any game runs.
//!
//! A GL program rarely calls `glCompileShader` through an export: it asks `glXGetProcAddress`
//! (or `eglGetProcAddress`, SDL, GLEW, glad) and libglvnd answers with a dispatch stub inside
//! `libGLdispatch.so.0` that no symbol names, at the same offset in every process that maps the
//! file. A short-lived helper (`nvbind-agent __resolve-gl`, the agent's own binary, so GL
//! libraries stay out of the agent) asks for each compile function and prints the pointers; the
//! agent turns them into file and offset with the helper's memory map, as for the Vulkan drivers
//! (`super::vulkan`), and hooks them before tracking anything: games already running are covered.
//! Asking needs no display or context: libglvnd's stubs exist before any vendor library loads.

use std::{
    ffi::{c_char, c_void, CString},
    io::Write,
};

use anyhow::{bail, Result};
use libloading::Library;
use nvbind_common::compile_call;

use super::vulkan::format_line;

/// Where each front end keeps its `*GetProcAddress`: GLX (libglvnd's libGLX, or a legacy libGL),
/// then EGL. Both answer with the same stubs under libglvnd; a legacy libGL has its own.
const FRONT_ENDS: [(&str, &[u8]); 3] = [
    ("libGLX.so.0", b"glXGetProcAddressARB\0"),
    ("libGL.so.1", b"glXGetProcAddressARB\0"),
    ("libEGL.so.1", b"eglGetProcAddress\0"),
];

type GetProcAddress = unsafe extern "C" fn(*const c_char) -> *const c_void;

/// The GL compile functions hooked at start: their core names. The `…ARB` names (old
/// ARB_shader_objects programs) have stubs of their own, hooked when a tracked process asks for
/// them: every uprobe costs the agent ~0.1 s at exit, when the kernel removes it.
fn gl_functions() -> impl Iterator<Item = &'static str> {
    compile_call::NAMES
        .iter()
        .filter(|(call, name)| compile_call::is_gl(*call) && !name.ends_with("ARB"))
        .map(|(_, name)| *name)
}

/// The helper's side: ask every front end present for every GL compile function, print one
/// `0xADDRESS<TAB>FRONT END<TAB>FUNCTION` line per answer and `end`, then wait for stdin to close
/// (the agent reads this process's maps meanwhile).
pub fn serve_here() -> Result<()> {
    let mut lines = String::new();
    let mut loaded = Vec::new();
    for (file, symbol) in FRONT_ENDS {
        // SAFETY: loads a system GL library (its constructors only register dispatch tables).
        let Ok(library) = (unsafe { Library::new(file) }) else {
            continue;
        };
        // SAFETY: the symbol's type is GLX's and EGL's `*GetProcAddress`.
        let Ok(get) = (unsafe { library.get::<GetProcAddress>(symbol) }) else {
            continue;
        };
        for function in gl_functions() {
            let Ok(name) = CString::new(function) else {
                continue;
            };
            // SAFETY: a NUL-terminated name; the answer is only printed, never called.
            let address = unsafe { get(name.as_ptr()) };
            if !address.is_null() {
                lines.push_str(&format_line(address as usize as u64, file, function));
            }
        }
        loaded.push(library);
    }
    if loaded.is_empty() {
        bail!(
            "no OpenGL library (none of {})",
            FRONT_ENDS.map(|(file, _)| file).join(", ")
        );
    }
    lines.push_str("end\n");
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(lines.as_bytes())?;
    stdout.flush()?;
    // Until the agent is done with our maps; what comes in is of no interest.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    drop(loaded);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_for_both_gl_calls_by_their_core_names_and_no_vulkan_one() {
        let names: Vec<&str> = gl_functions().collect();
        assert_eq!(names, ["glCompileShader", "glLinkProgram"]);
        assert!(names.iter().all(|n| n.starts_with("gl")), "{names:?}");
        for name in names {
            assert!(compile_call::is_gl(
                compile_call::from_name(name).expect("a compile call")
            ));
        }
    }
}
