//! The API under hostile load: `GET /` round trips (keep-alive) while 0, 10
//! and 40 slow clients each send a request one byte every 50 ms, and how
//! long a client over the connection cap waits for its 503 (the cap's
//! connections held idle meanwhile).

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::api::{round_trips, ApiVm, GROUP};
use crate::http::{read_reply, request_bytes};
use crate::paths::Binaries;
use crate::report::{Figure, Report};
use crate::stats::{micros, Better, Summary};
use crate::{Context, Error, Result};

/// The pause between a slow client's bytes.
const SLOW_BYTE_INTERVAL: Duration = Duration::from_millis(50);
/// Connections `ember` serves at once (its default).
const CONNECTION_CAP: usize = 64;

/// Runs the load figures with `requests` round trips each.
pub fn run(bins: &Binaries, socket: &Path, requests: usize, report: &mut Report) -> Result<()> {
    let (vm, _) = ApiVm::start(bins, socket)?;
    for slow in [0, 10, 40] {
        let times = with_slow_clients(socket, slow, requests)?;
        let s = Summary::of(&micros(&times))
            .ok_or_else(|| Error::Unexpected("no samples".to_owned()))?;
        for (stat, value) in [("median", s.median), ("p99", s.p99)] {
            report.figures.push(
                Figure::new(
                    GROUP,
                    &format!("GET / with {slow} slow clients, {stat}"),
                    value,
                    "us",
                    Better::Lower,
                )
                .note(&format!("n={requests}, keep-alive, 1 byte per 50 ms each")),
            );
        }
    }
    let refusal = time_to_refusal(socket, requests.min(200))?;
    report.figures.push(
        Figure::new(
            GROUP,
            "503 over the connection cap, median",
            refusal,
            "us",
            Better::Lower,
        )
        .note(&format!("{CONNECTION_CAP} idle connections held")),
    );
    vm.stop()
}

/// `GET /` round trips while `slow` clients trickle requests in.
fn with_slow_clients(socket: &Path, slow: usize, requests: usize) -> Result<Vec<Duration>> {
    let request = request_bytes("GET", "/", None);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..slow {
            scope.spawn(|| trickle(socket, &request, &stop));
        }
        // Let every slow client connect and start.
        std::thread::sleep(SLOW_BYTE_INTERVAL * 2);
        let times = round_trips(socket, &request, 200, requests, true);
        stop.store(true, Ordering::Relaxed);
        times
    })
}

/// Sends `request` (again and again) one byte at a time until `stop`.
fn trickle(socket: &Path, request: &[u8], stop: &AtomicBool) {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return;
    };
    for byte in request.iter().cycle() {
        if stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
            return;
        }
        std::thread::sleep(SLOW_BYTE_INTERVAL);
    }
}

/// Median microseconds from connecting to reading the 503 while the cap's
/// worth of connections is held open.
fn time_to_refusal(socket: &Path, count: usize) -> Result<f64> {
    let held: Vec<UnixStream> = (0..CONNECTION_CAP)
        .map(|_| UnixStream::connect(socket).ctx("holding a connection"))
        .collect::<Result<_>>()?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let stream = UnixStream::connect(socket).ctx("connecting over the cap")?;
        let reply = read_reply(&mut BufReader::new(stream))?;
        times.push(started.elapsed());
        if reply.status != 503 {
            return Err(Error::Unexpected(format!(
                "over the cap: status {}",
                reply.status
            )));
        }
    }
    drop(held);
    Summary::of(&micros(&times))
        .map(|s| s.median)
        .ok_or_else(|| Error::Unexpected("no samples".to_owned()))
}
