//! `map-copies N FILE DIR`: makes N copies of FILE, each under its own name in its own folder
//! (`DIR/K/NAME`, so each keeps the library's file name), maps each one, says `mapped` on
//! standard output, and holds them until killed. What a local user does to make the agent hook a
//! graphics library again and again (the hostile-user tests run it as nobody).

use std::{io::Write, os::fd::AsRawFd, path::PathBuf};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [count, file, dir] = args.as_slice() else {
        eprintln!("usage: map-copies N FILE DIR");
        std::process::exit(2);
    };
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("map-copies: N must be a number, not {count:?}");
        std::process::exit(2);
    };
    let source = PathBuf::from(file);
    let Some(name) = source.file_name() else {
        eprintln!("map-copies: {file} names no file");
        std::process::exit(2);
    };
    let mut held = Vec::with_capacity(count);
    for k in 0..count {
        let folder = PathBuf::from(dir).join(k.to_string());
        let copy = folder.join(name);
        let mapped = std::fs::create_dir_all(&folder)
            .and_then(|()| std::fs::copy(&source, &copy))
            .and_then(|_| std::fs::File::open(&copy))
            .and_then(|f| {
                let len = f.metadata()?.len() as usize;
                // SAFETY: a fresh read-only private mapping of a file we opened; it is never
                // read through, only held.
                let at = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE,
                        f.as_raw_fd(),
                        0,
                    )
                };
                if at == libc::MAP_FAILED {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(at)
            });
        match mapped {
            Ok(at) => held.push(at),
            Err(e) => {
                eprintln!("map-copies: {}: {e}", copy.display());
                std::process::exit(1);
            }
        }
    }
    println!("mapped");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
