//! A one-line status with a spinner for `hearth run` on a terminal.
//!
//! A background task redraws the status line ten times a second; progress lines are printed
//! above it through [`Spinner::println`], which takes the same lock so a line and a redraw never
//! interleave. Only used when stderr is a terminal: piped output gets plain lines.
//!
//! Status and lines carry the model's words (tool names, arguments), so both are escaped with
//! [`field`]: the spinner's own `CLEAR` is the only control sequence it writes.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::escape::field;
use super::output::{OutputError, Stream};

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const TICK: Duration = Duration::from_millis(100);
/// Erase the current line and return to its start.
const CLEAR: &str = "\r\x1b[2K";

#[derive(Debug)]
struct Line {
    status: String,
    frame: usize,
}

/// The live status line.
#[derive(Debug)]
pub struct Spinner {
    line: Arc<Mutex<Line>>,
    redraw: tokio::task::JoinHandle<()>,
}

impl Spinner {
    /// Starts redrawing `status` with the time since now.
    pub fn start(status: impl Into<String>) -> Self {
        let line = Arc::new(Mutex::new(Line {
            status: field(&status.into()).into_owned(),
            frame: 0,
        }));
        let started = Instant::now();
        let redraw = tokio::spawn({
            let line = Arc::clone(&line);
            async move {
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    let mut line = lock(&line);
                    line.frame = (line.frame + 1) % FRAMES.len();
                    let mut err = std::io::stderr().lock();
                    // Errors are left to `println`, which reports them.
                    let _ = write!(
                        err,
                        "{CLEAR}{} {} ({:.0}s)",
                        FRAMES[line.frame],
                        line.status,
                        started.elapsed().as_secs_f64()
                    );
                    let _ = err.flush();
                }
            }
        });
        Self { line, redraw }
    }

    pub fn set_status(&self, status: impl Into<String>) {
        lock(&self.line).status = field(&status.into()).into_owned();
    }

    /// Prints `text` above the status line.
    pub fn println(&self, text: &str) -> Result<(), OutputError> {
        let _line = lock(&self.line);
        let mut err = std::io::stderr().lock();
        writeln!(err, "{CLEAR}{}", field(text))
            .map_err(|source| OutputError::io(Stream::Stderr, source))
    }

    /// Stops redrawing and erases the status line.
    pub fn stop(self) {
        self.redraw.abort();
        let _line = lock(&self.line);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{CLEAR}");
        let _ = err.flush();
    }
}

fn lock(line: &Mutex<Line>) -> MutexGuard<'_, Line> {
    line.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
