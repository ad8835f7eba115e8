//! Progress of long CLI operations on stderr: on a terminal one line that redraws
//! itself (spinner, step, elapsed time); anywhere else one plain `wasmgate: STEP` line
//! per step, so logs, pipes and CI output stay readable.

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
const TICK: Duration = Duration::from_millis(100);

type Out = Box<dyn Write + Send>;

struct Shared {
    out: Mutex<Out>,
    step: Mutex<String>,
    started: Instant,
}

impl Shared {
    fn draw(&self, frame: usize) {
        let step = self.step.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // Carriage return and erase-line: the line is redrawn in place.
        let _ = write!(
            out,
            "\r\x1b[2K{} {step} {:.1}s",
            FRAMES[frame % FRAMES.len()],
            self.started.elapsed().as_secs_f64()
        );
        let _ = out.flush();
    }
}

pub struct Progress {
    shared: Arc<Shared>,
    /// On a terminal: the redraw thread and the sender that stops it.
    ticker: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Progress {
    /// On stderr, redrawing when it is a terminal.
    pub fn stderr(first_step: &str) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self::new(Box::new(std::io::stderr()), tty, first_step)
    }

    pub fn new(out: Out, tty: bool, first_step: &str) -> Self {
        let shared = Arc::new(Shared {
            out: Mutex::new(out),
            step: Mutex::new(String::new()),
            started: Instant::now(),
        });
        let ticker = tty.then(|| {
            let (stop, stopped) = channel::<()>();
            let drawing = shared.clone();
            let thread = std::thread::spawn(move || {
                let mut frame = 0;
                // Dropping the sender ends the loop as well as a message does.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    frame += 1;
                    drawing.draw(frame);
                }
            });
            (stop, thread)
        });
        let progress = Self { shared, ticker };
        progress.step(first_step);
        progress
    }

    /// The operation moved on to `what`.
    pub fn step(&self, what: &str) {
        *self.shared.step.lock().unwrap_or_else(|e| e.into_inner()) = what.to_owned();
        if self.ticker.is_some() {
            self.shared.draw(0);
        } else {
            let mut out = self.shared.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(out, "wasmgate: {what}");
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Stops the redraws and erases the line, so the next output starts clean.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some((stop, thread)) = self.ticker.take() {
            drop(stop);
            let _ = thread.join();
            let mut out = self.shared.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn plain_lines_off_a_terminal() {
        let buffer = Buffer::default();
        let progress = Progress::new(Box::new(buffer.clone()), false, "reading a.wasm");
        progress.step("compiling a.wasm");
        std::thread::sleep(TICK * 2);
        progress.finish();
        assert_eq!(
            buffer.text(),
            "wasmgate: reading a.wasm\nwasmgate: compiling a.wasm\n"
        );
    }

    #[test]
    fn one_redrawn_line_on_a_terminal() {
        let buffer = Buffer::default();
        let progress = Progress::new(Box::new(buffer.clone()), true, "compiling a.wasm");
        std::thread::sleep(TICK * 3);
        progress.finish();
        let text = buffer.text();
        assert!(!text.contains('\n'), "{text:?}");
        // The first draw and at least one tick of the spinner.
        assert!(text.matches("\r\x1b[2K").count() >= 3, "{text:?}");
        assert!(text.contains("| compiling a.wasm 0.0s"), "{text:?}");
        assert!(text.contains("/ compiling a.wasm"), "{text:?}");
        assert!(text.ends_with("\r\x1b[2K"), "{text:?}");
    }
}
