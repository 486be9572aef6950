//! The REST API of `ember --api-sock`: how soon the socket accepts, how
//! long requests take, and configure-and-boot over it.
//!
//! - **Start to accepting**: the process is spawned and its socket polled
//!   (every 50 µs) until a connection succeeds; at that moment its CPU time
//!   is read from `/proc` (see [`crate::procfs`]: the sum of the live
//!   threads' run time in nanoseconds, and `utime + stime` in 10 ms ticks)
//!   and the wall time since the spawn is taken. Firecracker's
//!   specification for the same is 8 CPU ms.
//! - **Latency**: [`Options::requests`] round trips of `GET /` and of a
//!   `PUT /machine-config` (before boot, so it is accepted every time), on
//!   one keep-alive connection and with a new connection per request;
//!   median and 99th percentile.
//! - **Under load** ([`crate::api_load`]): `GET /` beside slow clients, and
//!   the time a client over the connection cap waits for its 503.
//! - **Configure and boot**: `PUT /boot-source`, `PUT /machine-config`,
//!   `PUT /actions` (InstanceStart) with the `boottimer` test guest, timed
//!   from the first request to the boot-timer log line; `ember` also logs
//!   its own figure, measured from InstanceStart.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::boot::GUEST;
use crate::http::{request_bytes, Client};
use crate::paths::Binaries;
use crate::process::{parse_boot_time, Running, BOOT_TIME_KEY};
use crate::procfs::cpu_time;
use crate::report::{Figure, Report};
use crate::stats::{micros, millis, Better, Summary};
use crate::{Context, Error, Result};

/// The group name in reports.
pub const GROUP: &str = "api";
/// How long a process may take to accept or to boot.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Processes started for the start-to-accepting figures.
    pub starts: usize,
    /// Round trips per latency figure.
    pub requests: usize,
    /// Configure-and-boot runs.
    pub boots: usize,
}

/// An `ember --api-sock` process whose socket accepts connections.
#[derive(Debug)]
pub struct ApiVm {
    /// The process.
    pub process: Running,
    /// Its socket.
    pub socket: PathBuf,
}

/// What was seen when the socket first accepted.
#[derive(Clone, Copy, Debug)]
pub struct FirstAccept {
    /// Spawn to the first successful connect.
    pub wall: Duration,
    /// Run time of the live threads then.
    pub cpu_threads: Duration,
    /// `utime + stime` then (tick resolution).
    pub cpu_ticks: Duration,
}

impl ApiVm {
    /// Starts `ember --api-sock <socket>` and waits until it accepts.
    pub fn start(bins: &Binaries, socket: &Path) -> Result<(ApiVm, FirstAccept)> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(format!("removing {}", socket.display())),
        }
        let mut command = Command::new(&bins.ember);
        command.arg("--api-sock").arg(socket);
        let mut process = Running::spawn(command, true)?;
        let pid = process.pid();
        loop {
            if UnixStream::connect(socket).is_ok() {
                let wall = process.started.elapsed();
                let cpu = cpu_time(pid)?;
                let first = FirstAccept {
                    wall,
                    cpu_threads: cpu.threads,
                    cpu_ticks: cpu.ticks,
                };
                let vm = ApiVm {
                    process,
                    socket: socket.to_path_buf(),
                };
                return Ok((vm, first));
            }
            if process.started.elapsed() > TIMEOUT {
                process.terminate(TIMEOUT)?;
                return Err(Error::Timeout(format!(
                    "{} never accepted",
                    socket.display()
                )));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Stops the process.
    pub fn stop(mut self) -> Result<()> {
        self.process.terminate(TIMEOUT).map(|_| ())
    }
}

/// Runs the group, adding figures to `report`.
pub fn run(bins: &Binaries, scratch: &Path, options: Options, report: &mut Report) -> Result<()> {
    let socket = scratch.join(format!("api-{}.sock", std::process::id()));
    start_to_accept(bins, &socket, options, report)?;
    latency(bins, &socket, options, report)?;
    crate::api_load::run(bins, &socket, options.requests.min(2000), report)?;
    configure_and_boot(bins, &socket, options, report)?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn summary(values: &[f64]) -> Result<Summary> {
    Summary::of(values).ok_or_else(|| Error::Unexpected("no samples".to_owned()))
}

fn start_to_accept(
    bins: &Binaries,
    socket: &Path,
    options: Options,
    report: &mut Report,
) -> Result<()> {
    // One unmeasured start warms the page cache.
    ApiVm::start(bins, socket)?.0.stop()?;
    let mut firsts = Vec::new();
    for _ in 0..options.starts {
        let (vm, first) = ApiVm::start(bins, socket)?;
        vm.stop()?;
        firsts.push(first);
    }
    let n = options.starts;
    let threads = summary(&millis(
        &firsts.iter().map(|f| f.cpu_threads).collect::<Vec<_>>(),
    ))?;
    let ticks = summary(&millis(
        &firsts.iter().map(|f| f.cpu_ticks).collect::<Vec<_>>(),
    ))?;
    let wall = summary(&millis(&firsts.iter().map(|f| f.wall).collect::<Vec<_>>()))?;
    let spec = "Firecracker spec: 8 CPU ms";
    report.figures.extend([
        Figure::new(
            GROUP,
            "start to socket accepting, CPU median",
            threads.median,
            "CPU ms",
            Better::Lower,
        )
        .note(&format!("{spec}; live threads' run time; n={n}")),
        Figure::new(
            GROUP,
            "start to socket accepting, CPU p90",
            threads.p90,
            "CPU ms",
            Better::Lower,
        )
        .note(spec),
        Figure::new(
            GROUP,
            "start to socket accepting, utime+stime median",
            ticks.median,
            "CPU ms",
            Better::Lower,
        )
        .note("/proc/<pid>/stat, 10 ms ticks: coarse"),
        Figure::new(
            GROUP,
            "start to socket accepting, wall median",
            wall.median,
            "ms",
            Better::Lower,
        )
        .note(&format!("spawn to first connect; n={n}")),
        Figure::new(
            GROUP,
            "start to socket accepting, wall p90",
            wall.p90,
            "ms",
            Better::Lower,
        ),
    ]);
    Ok(())
}

/// The requests whose latency is measured.
const MACHINE_CONFIG: &str = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;

fn latency(bins: &Binaries, socket: &Path, options: Options, report: &mut Report) -> Result<()> {
    let (vm, _) = ApiVm::start(bins, socket)?;
    let requests = [
        ("GET /", request_bytes("GET", "/", None), 200),
        (
            "PUT /machine-config",
            request_bytes("PUT", "/machine-config", Some(MACHINE_CONFIG)),
            204,
        ),
    ];
    let n = options.requests;
    for (name, bytes, status) in &requests {
        for keep_alive in [true, false] {
            let times = round_trips(socket, bytes, *status, n, keep_alive)?;
            let s = summary(&micros(&times))?;
            let how = if keep_alive {
                "keep-alive"
            } else {
                "new connection each"
            };
            for (stat, value) in [("median", s.median), ("p99", s.p99)] {
                report.figures.push(
                    Figure::new(
                        GROUP,
                        &format!("{name}, {how}, {stat}"),
                        value,
                        "us",
                        Better::Lower,
                    )
                    .note(&format!("n={n}")),
                );
            }
        }
    }
    vm.stop()
}

/// `count` round trips of `request` (after 1% unmeasured ones), each
/// checked for `status`.
pub fn round_trips(
    socket: &Path,
    request: &[u8],
    status: u16,
    count: usize,
    keep_alive: bool,
) -> Result<Vec<Duration>> {
    let warmup = count / 100;
    let mut times = Vec::with_capacity(count);
    let mut client = if keep_alive {
        Some(Client::connect(socket)?)
    } else {
        None
    };
    for i in 0..warmup + count {
        let start = Instant::now();
        let reply = match client.as_mut() {
            Some(client) => client.send(request)?,
            None => Client::connect(socket)?.send(request)?,
        };
        let elapsed = start.elapsed();
        if reply.status != status {
            return Err(Error::Unexpected(format!(
                "{}: status {} {}",
                String::from_utf8_lossy(request)
                    .lines()
                    .next()
                    .unwrap_or(""),
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )));
        }
        if i >= warmup {
            times.push(elapsed);
        }
    }
    Ok(times)
}

fn configure_and_boot(
    bins: &Binaries,
    socket: &Path,
    options: Options,
    report: &mut Report,
) -> Result<()> {
    let mut over_api = Vec::new();
    let mut logged = Vec::new();
    let mut spawn_to_signal = Vec::new();
    let boot_source = format!(
        r#"{{"kernel_image_path": "{GUEST}", "boot_args": "console=ttyS0 ember.test=boottimer"}}"#
    );
    for _ in 0..options.boots {
        let (mut vm, _) = ApiVm::start(bins, socket)?;
        let mut client = Client::connect(socket)?;
        let start = Instant::now();
        client.expect("PUT", "/boot-source", Some(&boot_source), 204)?;
        client.expect("PUT", "/machine-config", Some(MACHINE_CONFIG), 204)?;
        client.expect(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
            204,
        )?;
        let (at, line) = vm.process.wait_line(BOOT_TIME_KEY, TIMEOUT)?;
        let boot = parse_boot_time(&line)
            .ok_or_else(|| Error::Unexpected(format!("cannot parse {line:?}")))?;
        over_api.push(at - start);
        spawn_to_signal.push(at - vm.process.started);
        logged.push(boot.wall_us as f64 / 1e3);
        // The guest resets after the signal: the process ends by itself.
        vm.process.wait_exit(TIMEOUT)?;
    }
    let n = options.boots;
    let api = summary(&millis(&over_api))?;
    let own = summary(&logged)?;
    let total = summary(&millis(&spawn_to_signal))?;
    report.figures.extend([
        Figure::new(
            GROUP,
            "configure and boot, median",
            api.median,
            "ms",
            Better::Lower,
        )
        .note(&format!(
            "first PUT to boot signal (3 requests, 1 connection); n={n}"
        )),
        Figure::new(
            GROUP,
            "configure and boot, p90",
            api.p90,
            "ms",
            Better::Lower,
        ),
        Figure::new(
            GROUP,
            "InstanceStart to boot signal, median",
            own.median,
            "ms",
            Better::Lower,
        )
        .note("ember's guest-boot-time-us"),
        Figure::new(
            GROUP,
            "spawn to boot signal over the API, median",
            total.median,
            "ms",
            Better::Lower,
        )
        .note("process start, socket, 3 requests, boot"),
    ]);
    Ok(())
}
