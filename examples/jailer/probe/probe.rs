//! `ember-jail-probe`: the program the ember-jailer tests put in a jail. It
//! reports what it finds about itself as `key=value` lines: ids, open
//! descriptors, resource limits, what `/` holds, its session and standard
//! streams. Built statically by build.rs (a jail has no shared libraries),
//! with std only, so it declares the few C functions it needs itself.
//!
//! Options: `--fork N` (try N children that stay alive, report how many
//! started), `--write N` (write N bytes to /big), `--report FILE` (write the
//! report there instead of stdout), `--wait` (print `ready`, then wait for
//! end of input).

use std::io::{Read, Write};

#[repr(C)]
struct Rlimit {
    cur: u64,
    max: u64,
}

extern "C" {
    fn getresuid(r: *mut u32, e: *mut u32, s: *mut u32) -> i32;
    fn getresgid(r: *mut u32, e: *mut u32, s: *mut u32) -> i32;
    fn getgroups(size: i32, list: *mut u32) -> i32;
    fn getrlimit(resource: i32, limit: *mut Rlimit) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn fork() -> i32;
    fn pipe(fds: *mut i32) -> i32;
    fn read(fd: i32, buf: *mut u8, len: usize) -> isize;
    fn close(fd: i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn signal(signal: i32, handler: usize) -> usize;
    fn getsid(pid: i32) -> i32;
    fn _exit(code: i32) -> !;
}

const F_GETFD: i32 = 1;
const RLIMIT_FSIZE: i32 = 1;
const RLIMIT_NOFILE: i32 = 7;
const SIGXFSZ: i32 = 25;
const SIG_IGN: usize = 1;

fn ids(get: unsafe extern "C" fn(*mut u32, *mut u32, *mut u32) -> i32) -> String {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    unsafe { get(&mut r, &mut e, &mut s) };
    format!("{r},{e},{s}")
}

fn limit(resource: i32) -> String {
    let mut l = Rlimit { cur: 0, max: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { getrlimit(resource, &mut l) };
    format!("{},{}", l.cur, l.max)
}

fn errno_name(e: &std::io::Error) -> String {
    e.raw_os_error()
        .map_or_else(|| e.to_string(), |n| n.to_string())
}

/// Starts up to `n` children that wait for the pipe to close; returns how
/// many started and the errno of the first failure.
fn try_forks(n: u32) -> String {
    let mut fds = [0i32; 2];
    // SAFETY: a valid array of two ints.
    unsafe { pipe(fds.as_mut_ptr()) };
    let mut started = Vec::new();
    let mut failure = String::from("none");
    for _ in 0..n {
        // SAFETY: this process is single-threaded.
        match unsafe { fork() } {
            0 => {
                let mut byte = 0u8;
                // SAFETY: the child only closes, reads and exits.
                unsafe {
                    close(fds[1]);
                    read(fds[0], &mut byte, 1);
                    _exit(0)
                }
            }
            -1 => {
                failure = errno_name(&std::io::Error::last_os_error());
                break;
            }
            pid => started.push(pid),
        }
    }
    // SAFETY: closing our ends releases the children; then reap them.
    unsafe {
        close(fds[0]);
        close(fds[1]);
        for pid in &started {
            waitpid(*pid, std::ptr::null_mut(), 0);
        }
    }
    format!("forks={} fork_error={failure}", started.len())
}

fn try_write(n: usize) -> String {
    // SAFETY: ignoring SIGXFSZ makes an oversized write fail with EFBIG.
    unsafe { signal(SIGXFSZ, SIG_IGN) };
    let result = std::fs::File::create("/big").and_then(|mut f| f.write_all(&vec![0u8; n]));
    let _ = std::fs::remove_file("/big");
    match result {
        Ok(()) => "write=ok".to_owned(),
        Err(e) => format!("write_error={}", errno_name(&e)),
    }
}

/// `major:minor` of the device behind each standard stream (`0:0` for a
/// pipe), asked of the descriptors themselves since a jail has no /proc.
fn stdio() -> String {
    use std::os::unix::fs::MetadataExt;
    (0..3)
        .map(|fd| {
            // SAFETY: the File is never dropped, so the descriptor stays open.
            let file = std::mem::ManuallyDrop::new(unsafe {
                <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
            });
            match file.metadata() {
                Ok(m) => format!("{}:{}", (m.rdev() >> 8) & 0xfff, m.rdev() & 0xff),
                Err(e) => format!("error{}", errno_name(&e)),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn device(path: &str) -> String {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => "ok".to_owned(),
        Err(e) => errno_name(&e),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut lines = Vec::new();
    lines.push(format!("pid={}", std::process::id()));
    // SAFETY: getsid(0) asks about this process.
    lines.push(format!("sid={}", unsafe { getsid(0) }));
    lines.push(format!("uid={}", ids(getresuid)));
    lines.push(format!("gid={}", ids(getresgid)));
    // SAFETY: a size of 0 only counts the groups.
    lines.push(format!("groups={}", unsafe {
        getgroups(0, std::ptr::null_mut())
    }));
    // SAFETY: F_GETFD only inspects the descriptor number.
    let fds: Vec<String> = (0..4096)
        .filter(|&fd| unsafe { fcntl(fd, F_GETFD) } != -1)
        .map(|fd: i32| fd.to_string())
        .collect();
    lines.push(format!("fds={}", fds.join(",")));
    lines.push(format!("nofile={}", limit(RLIMIT_NOFILE)));
    lines.push(format!("fsize={}", limit(RLIMIT_FSIZE)));
    let mut root: Vec<String> = std::fs::read_dir("/")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    root.sort();
    lines.push(format!("root={}", root.join(",")));
    lines.push(format!("stdio={}", stdio()));
    lines.push(format!(
        "kvm={} tun={} urandom={}",
        device("/dev/kvm"),
        device("/dev/net/tun"),
        device("/dev/urandom")
    ));
    lines.push(format!("args={}", args.join(" ")));

    let mut report_to = None;
    let mut wait = false;
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--fork" => {
                lines.push(try_forks(value.parse().unwrap_or(0)));
                i += 1;
            }
            "--write" => {
                lines.push(try_write(value.parse().unwrap_or(0)));
                i += 1;
            }
            "--report" => {
                report_to = Some(value);
                i += 1;
            }
            "--wait" => wait = true,
            _ => {}
        }
        i += 1;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    match report_to {
        Some(path) => {
            std::fs::write(&path, format!("{text}done\n")).unwrap_or_else(|e| {
                eprintln!("cannot write {path}: {e}");
                std::process::exit(1)
            });
        }
        None => {
            print!("{text}");
            if wait {
                println!("ready");
                let _ = std::io::stdout().flush();
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
            }
            // The reader may be gone by now: a closed pipe is not an error.
            let _ = writeln!(std::io::stdout(), "done");
        }
    }
}
