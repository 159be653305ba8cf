//! The progress bar of a many-target run, drawn by `indicatif` on stderr when stderr is a
//! terminal. The whole line is one `wide_msg`, so indicatif cuts it to the terminal's width
//! (however narrow) and no stale lines pile up in the scrollback.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the line is redrawn (the elapsed time moves on).
const TICK: Duration = Duration::from_millis(200);
/// When this many targets or fewer are left and all are running, the line names them.
const NAME_RUNNING: usize = 5;

/// Counts shown on the line.
#[derive(Debug, Default)]
struct Counts {
    done: usize,
    failed: usize,
    /// Spellings of the targets running now (at most `-P` of them).
    running: BTreeSet<String>,
}

/// A live progress line; every method is cheap and safe to call from the renderer.
pub struct Progress {
    bar: ProgressBar,
    total: usize,
    started: Instant,
    counts: Mutex<Counts>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// A progress line for `total` targets on stderr, if stderr is a terminal.
    pub fn on_stderr(total: usize) -> Option<Arc<Self>> {
        crate::render::is_tty(2).then(|| Self::new(total, ProgressDrawTarget::stderr()))
    }

    /// A progress line drawn to `target`; redrawn every [`TICK`] while a runtime runs.
    pub fn new(total: usize, target: ProgressDrawTarget) -> Arc<Self> {
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        // The template is a fixed string that always parses; a failure leaves the default.
        if let Ok(style) = ProgressStyle::with_template("{wide_msg}") {
            bar.set_style(style);
        }
        let progress = Arc::new_cyclic(|weak: &std::sync::Weak<Self>| {
            let weak = weak.clone();
            // The ticker ends by itself once the progress line is dropped.
            let ticker = tokio::runtime::Handle::try_current().ok().map(|rt| {
                rt.spawn(async move {
                    let mut every = tokio::time::interval(TICK);
                    loop {
                        every.tick().await;
                        match weak.upgrade() {
                            Some(p) => p.redraw(),
                            None => return,
                        }
                    }
                })
            });
            Self {
                bar,
                total,
                started: Instant::now(),
                counts: Mutex::default(),
                ticker,
            }
        });
        progress.redraw();
        progress
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // A panic while holding the lock leaves counts that are still valid numbers.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A target started.
    pub fn started(&self, target: &str) {
        self.counts().running.insert(target.to_owned());
        self.redraw();
    }

    /// A target finished.
    pub fn finished(&self, target: &str, failed: bool) {
        {
            let mut counts = self.counts();
            counts.running.remove(target);
            counts.done += 1;
            counts.failed += usize::from(failed);
        }
        self.bar.inc(1);
        self.redraw();
    }

    /// Runs `write` with the line taken off the screen, then puts it back.
    pub fn suspend<R>(&self, write: impl FnOnce() -> R) -> R {
        self.bar.suspend(write)
    }

    /// Removes the line for good.
    pub fn clear(&self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }

    fn redraw(&self) {
        if self.bar.is_finished() {
            return;
        }
        let text = {
            let counts = self.counts();
            line(&counts, self.total, self.started.elapsed())
        };
        self.bar.set_message(text);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The text of the line: a 20-cell bar, done/total, failures, elapsed time, and the targets
/// still running once only a few are left.
fn line(counts: &Counts, total: usize, elapsed: Duration) -> String {
    const CELLS: usize = 20;
    let filled = (counts.done * CELLS)
        .checked_div(total)
        .unwrap_or(CELLS)
        .min(CELLS);
    let mut text = format!(
        "[{}{}] {}/{total} done, {} failed, {:.1}s",
        "#".repeat(filled),
        "-".repeat(CELLS - filled),
        counts.done,
        counts.failed,
        elapsed.as_secs_f64()
    );
    let left = total.saturating_sub(counts.done);
    if left > 0 && left <= NAME_RUNNING && counts.running.len() == left {
        let names: Vec<&str> = counts.running.iter().map(|s| s.as_str()).collect();
        text += &format!(", waiting for {}", names.join(" "));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io;

    use indicatif::TermLike;

    use super::*;

    /// A terminal `width` columns wide that records what is drawn on it.
    #[derive(Debug, Clone)]
    struct Narrow {
        width: u16,
        drawn: Arc<Mutex<Vec<String>>>,
    }

    impl TermLike for Narrow {
        fn width(&self) -> u16 {
            self.width
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            self.drawn.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_line_fits_a_narrow_terminal() {
        for width in [10u16, 30, 80] {
            let term = Narrow {
                width,
                drawn: Arc::default(),
            };
            let target = ProgressDrawTarget::term_like_with_hz(Box::new(term.clone()), 255);
            let progress = Progress::new(3, target);
            progress.started("web-with-a-long-name-01.example.com");
            progress.started("web-with-a-long-name-02.example.com");
            progress.finished("web-with-a-long-name-01.example.com", true);
            progress.clear();
            let drawn = term.drawn.lock().unwrap();
            assert!(!drawn.is_empty(), "nothing drawn at width {width}");
            for text in drawn.iter() {
                let columns = text.chars().count();
                assert!(
                    columns <= usize::from(width),
                    "{columns} > {width}: {text:?}"
                );
            }
        }
    }

    #[test]
    fn the_line_names_the_last_targets_running() {
        let mut counts = Counts {
            done: 8,
            failed: 1,
            ..Counts::default()
        };
        counts.running.insert("web9".into());
        counts.running.insert("web10".into());
        assert_eq!(
            line(&counts, 10, Duration::from_millis(2500)),
            "[################----] 8/10 done, 1 failed, 2.5s, waiting for web10 web9"
        );
        // With many left, or some not started yet, no names.
        counts.running.remove("web9");
        assert_eq!(
            line(&counts, 10, Duration::ZERO),
            "[################----] 8/10 done, 1 failed, 0.0s"
        );
        assert_eq!(
            line(&Counts::default(), 0, Duration::ZERO),
            "[####################] 0/0 done, 0 failed, 0.0s"
        );
    }
}
