//! Connection setup rate: K loops, each opening a connection (TCP, TLS handshake if
//! configured), logging in (CONNECT with username and password -> CONNACK) and
//! leaving with DISCONNECT, as fast as the broker allows. Failures are counted and
//! the first one is reported; they do not stop the run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::client::Target;
use super::options::ConnectRateArgs;
use super::report::{ConnectRateResult, Measured, Report};
use super::{BenchError, joined, run_tag};

/// Pause after a failed attempt, so a refusing broker is not hammered in a tight loop.
const BACKOFF: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Tally {
    completed: AtomicU64,
    failed: AtomicU64,
    setup_micros: AtomicU64,
    first_error: Mutex<Option<String>>,
}

pub(crate) async fn run(args: &ConnectRateArgs) -> Result<Report, BenchError> {
    let target = Target::from_args(&args.common)?;
    let tag = run_tag();
    target.warm_up().await?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = JoinSet::new();
    for k in 0..args.parallel {
        let target = target.clone();
        let tally = Arc::clone(&tally);
        let stop = Arc::clone(&stop);
        let id = format!("bc-{tag}-{k}");
        let max = args.max_connections;
        loops.spawn(async move {
            let mut attempt = 0u64;
            while attempt < max && !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let index = k + attempt as usize * 7919;
                attempt += 1;
                match target.connect(&id, index).await {
                    Ok(client) => {
                        let setup = started.elapsed().as_micros() as u64;
                        tally.setup_micros.fetch_add(setup, Ordering::Relaxed);
                        tally.completed.fetch_add(1, Ordering::Relaxed);
                        // The handshake and login are what is measured; a failed
                        // goodbye still counts as a completed setup.
                        let _ = client.disconnect().await;
                    }
                    Err(err) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = tally.first_error.lock() {
                            first.get_or_insert_with(|| err.to_string());
                        }
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
            }
            Ok::<(), BenchError>(())
        });
    }

    let started = Instant::now();
    tokio::time::sleep(args.warmup).await;
    let from = (Instant::now(), tally.completed.load(Ordering::Relaxed));
    tokio::time::sleep(args.duration).await;
    let to = (Instant::now(), tally.completed.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    while let Some(outcome) = loops.join_next().await {
        joined(outcome)?;
    }
    let _ = started;
    let completed = tally.completed.load(Ordering::Relaxed);
    let window = to.0.duration_since(from.0).as_secs_f64().max(1e-9);
    let first_error = tally.first_error.lock().ok().and_then(|e| e.clone());
    Ok(Report {
        scenario: "connect-rate",
        target: target.addr().to_string(),
        tls: target.is_tls(),
        protocol: target.protocol.level(),
        result: Measured::ConnectRate(ConnectRateResult {
            parallel: args.parallel,
            window_secs: window,
            connections_per_sec: (to.1 - from.1) as f64 / window,
            completed,
            failed: tally.failed.load(Ordering::Relaxed),
            first_error,
            mean_setup_us: if completed == 0 {
                0.0
            } else {
                tally.setup_micros.load(Ordering::Relaxed) as f64 / completed as f64
            },
        }),
    })
}
