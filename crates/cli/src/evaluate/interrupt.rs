//! Ctrl-C during a batch evaluation: the first one asks the run to stop after the rows in
//! flight (so the summary and the output stay whole); a second one exits at once, leaving the
//! output as it is (every line written so far is whole, and `--resume` reads it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once Ctrl-C was pressed.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Whether the run should stop.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Starts watching for SIGINT. The handler is installed before this returns; if it cannot
/// be, Ctrl-C keeps its default effect (the process ends) and a note says so.
pub fn on_ctrl_c() -> Stop {
    let stop = Stop::default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("note: Ctrl-C will end the run without a summary ({e})");
            return stop;
        }
    };
    let signals = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    });
    let mut signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("note: Ctrl-C will end the run without a summary ({e})");
            return stop;
        }
    };
    let flag = stop.clone();
    std::thread::spawn(move || {
        runtime.block_on(async {
            if signals.recv().await.is_none() {
                return;
            }
            flag.0.store(true, Ordering::SeqCst);
            eprintln!(
                "\ninterrupted: writing the rows in flight, then the summary (Ctrl-C again to \
                 stop at once)"
            );
            if signals.recv().await.is_some() {
                eprintln!("stopped; the output holds every row written so far");
                std::process::exit(130);
            }
        })
    });
    stop
}
