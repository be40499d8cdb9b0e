//! Progress of a long CLI stage (generating images, fine-tuning) on stderr: on a
//! terminal one bar redrawn in place, in a log (a headless run) a plain line every
//! tenth of the work or every 30 s, so the log stays short but shows the run is alive.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A terminal redraw at most this often: faster is flicker, and costs the work time.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// A log line at least this often while the work goes on, even below a tenth.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// Characters in the terminal bar.
const BAR_WIDTH: usize = 24;

pub struct StageProgress {
    what: String,
    unit: String,
    total: usize,
    start: Instant,
    /// Redraw one line (a terminal) rather than append lines (a log).
    terminal: bool,
    sink: Box<dyn Write>,
    done: usize,
    /// When the bar was last drawn, or the last log line written (None: never).
    last_shown: Option<Instant>,
    /// The units done at the last log line.
    logged: usize,
    finished: bool,
}

impl StageProgress {
    /// `what` = "generating", `unit` = "images" / "steps"; `total` units.
    pub fn new(what: &str, unit: &str, total: usize) -> StageProgress {
        let terminal = std::io::stderr().is_terminal();
        StageProgress::to_sink(what, unit, total, terminal, Box::new(std::io::stderr()))
    }

    fn to_sink(what: &str, unit: &str, total: usize, terminal: bool, sink: Box<dyn Write>) -> StageProgress {
        StageProgress {
            what: what.into(),
            unit: unit.into(),
            total,
            start: Instant::now(),
            terminal,
            sink,
            done: 0,
            last_shown: None,
            logged: 0,
            finished: false,
        }
    }

    /// `done` units finished so far (monotone); `detail` an optional short suffix ("loss 0.31").
    pub fn update(&mut self, done: usize, detail: &str) {
        self.done = self.done.max(done);
        let now = Instant::now();
        let since = |last: Option<Instant>| last.map_or(Duration::MAX, |t| now - t);
        let show = if self.terminal {
            since(self.last_shown) >= REDRAW_EVERY
        } else {
            // The end is left to finish's line; before it, a line a tenth or a LOG_EVERY.
            self.done < self.total
                && (tenths(self.done, self.total) > tenths(self.logged, self.total)
                    || since(self.last_shown.or(Some(self.start))) >= LOG_EVERY)
        };
        if show {
            self.show(now, detail);
        }
    }

    /// The stage ended: on a terminal, end the bar's line; otherwise print a final line.
    pub fn finish(&mut self, detail: &str) {
        if self.finished {
            return;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let line = if self.terminal {
            format!("\r{}\x1b[K\n", bar_line(&self.what, &self.unit, self.done, self.total, elapsed, detail))
        } else {
            format!("{}\n", finish_line(&self.what, &self.unit, self.done, self.total, elapsed, detail))
        };
        self.write(&line);
        self.finished = true;
    }

    fn show(&mut self, now: Instant, detail: &str) {
        let elapsed = (now - self.start).as_secs_f64();
        let line = if self.terminal {
            // \x1b[K clears what a longer earlier line left to the right.
            format!("\r{}\x1b[K", bar_line(&self.what, &self.unit, self.done, self.total, elapsed, detail))
        } else {
            format!("{}\n", log_line(&self.what, &self.unit, self.done, self.total, elapsed, detail))
        };
        self.write(&line);
        self.last_shown = Some(now);
        self.logged = self.done;
    }

    /// Progress is a courtesy: a closed or full stderr must not stop the work.
    fn write(&mut self, text: &str) {
        let _ = self.sink.write_all(text.as_bytes()).and_then(|()| self.sink.flush());
    }
}

impl Drop for StageProgress {
    /// A stage left early (an error) ends the bar's line, so the error message starts on its own.
    fn drop(&mut self) {
        if self.terminal && self.last_shown.is_some() && !self.finished {
            self.write("\n");
        }
    }
}

/// Whole tenths of the work done (10 when there is no work).
fn tenths(done: usize, total: usize) -> usize {
    if total == 0 {
        10
    } else {
        (done.min(total) as u128 * 10 / total as u128) as usize
    }
}

/// `generating [######..................] 120/480 images  5.3 images/s  0:45 left  loss 0.31`
fn bar_line(what: &str, unit: &str, done: usize, total: usize, elapsed_s: f64, detail: &str) -> String {
    let filled =
        if total == 0 { BAR_WIDTH } else { (done.min(total) as u128 * BAR_WIDTH as u128 / total as u128) as usize };
    let mut line = format!("{what} [{}{}] {done}/{total} {unit}", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled));
    if let Some(rate) = rate(done, elapsed_s) {
        line += &format!("  {} {unit}/s  {} left", rate_text(rate), clock(remaining(done, total, rate)));
    }
    with_detail(line, "  ", detail)
}

/// `generating: 120/480 images (25%), 5.3 images/s, 0:45 left loss 0.31`
fn log_line(what: &str, unit: &str, done: usize, total: usize, elapsed_s: f64, detail: &str) -> String {
    let mut line = format!("{what}: {done}/{total} {unit} ({}%)", percent(done, total));
    if let Some(rate) = rate(done, elapsed_s) {
        line += &format!(", {} {unit}/s, {} left", rate_text(rate), clock(remaining(done, total, rate)));
    }
    with_detail(line, " ", detail)
}

/// The last log line: `generating: 480/480 images (100%) in 1:30, 5.3 images/s loss 0.31`
fn finish_line(what: &str, unit: &str, done: usize, total: usize, elapsed_s: f64, detail: &str) -> String {
    let mut line = format!("{what}: {done}/{total} {unit} ({}%) in {}", percent(done, total), clock(elapsed_s));
    if let Some(rate) = rate(done, elapsed_s) {
        line += &format!(", {} {unit}/s", rate_text(rate));
    }
    with_detail(line, " ", detail)
}

fn with_detail(line: String, gap: &str, detail: &str) -> String {
    if detail.is_empty() {
        line
    } else {
        format!("{line}{gap}{detail}")
    }
}

fn percent(done: usize, total: usize) -> u128 {
    if total == 0 {
        100
    } else {
        done.min(total) as u128 * 100 / total as u128
    }
}

/// Units a second, unknown before the first unit or the first instant.
fn rate(done: usize, elapsed_s: f64) -> Option<f64> {
    (done > 0 && elapsed_s > 0.0).then(|| done as f64 / elapsed_s)
}

fn remaining(done: usize, total: usize, rate: f64) -> f64 {
    total.saturating_sub(done) as f64 / rate
}

/// Two significant digits ("5.3", "53", "0.31", "0.0042"), three or more digits whole.
fn rate_text(rate: f64) -> String {
    let decimals = (1.0 - rate.log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{rate:.decimals$}")
}

/// `m:ss`, or `h:mm:ss` from an hour on; `-:--` for a time that is not one.
fn clock(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 || seconds >= u64::MAX as f64 {
        return "-:--".into();
    }
    let s = seconds.round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn clock_reads_minutes_or_hours() {
        assert_eq!(clock(0.0), "0:00");
        assert_eq!(clock(45.4), "0:45");
        assert_eq!(clock(59.6), "1:00");
        assert_eq!(clock(754.0), "12:34");
        assert_eq!(clock(3600.0), "1:00:00");
        assert_eq!(clock(3.0 * 3600.0 + 62.0), "3:01:02");
        assert_eq!(clock(f64::INFINITY), "-:--");
        assert_eq!(clock(f64::NAN), "-:--");
        assert_eq!(clock(-1.0), "-:--");
    }

    #[test]
    fn rates_keep_two_significant_digits() {
        assert_eq!(rate_text(5.3), "5.3");
        assert_eq!(rate_text(53.2), "53");
        assert_eq!(rate_text(532.4), "532");
        assert_eq!(rate_text(0.314), "0.31");
        assert_eq!(rate_text(0.00423), "0.0042");
    }

    #[test]
    fn bar_line_shows_the_bar_count_rate_and_time_left() {
        // 120 of 480 in 22.64 s: 5.3 a second, 360 left in 67.9 s.
        assert_eq!(
            bar_line("generating", "images", 120, 480, 22.64, "loss 0.31"),
            "generating [######..................] 120/480 images  5.3 images/s  1:08 left  loss 0.31"
        );
        assert_eq!(bar_line("tuning", "steps", 0, 7, 0.0, ""), "tuning [........................] 0/7 steps");
        assert_eq!(
            bar_line("tuning", "steps", 7, 7, 2.0, ""),
            "tuning [########################] 7/7 steps  3.5 steps/s  0:00 left"
        );
        assert_eq!(bar_line("nothing", "steps", 0, 0, 1.0, ""), "nothing [########################] 0/0 steps");
    }

    #[test]
    fn log_lines_are_plain() {
        assert_eq!(
            log_line("generating", "images", 120, 480, 22.64, "loss 0.31"),
            "generating: 120/480 images (25%), 5.3 images/s, 1:08 left loss 0.31"
        );
        assert_eq!(log_line("generating", "images", 0, 480, 3.0, ""), "generating: 0/480 images (0%)");
        assert_eq!(
            finish_line("generating", "images", 480, 480, 90.4, ""),
            "generating: 480/480 images (100%) in 1:30, 5.3 images/s"
        );
    }

    /// A sink the test reads back after the progress has written to it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn a_log_gets_a_line_a_tenth_and_a_final_line() {
        let out = Shared::default();
        let mut p = StageProgress::to_sink("generating", "images", 480, false, Box::new(out.clone()));
        for done in 1..=480 {
            p.update(done, "");
        }
        p.finish("done");
        p.finish("twice");
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        // 48, 96, ..., 432 (the 100% is finish's), well inside 30 s.
        assert_eq!(lines.len(), 10, "{text}");
        assert!(lines[0].starts_with("generating: 48/480 images (10%)"), "{text}");
        assert!(lines[8].starts_with("generating: 432/480 images (90%)"), "{text}");
        assert!(lines[9].starts_with("generating: 480/480 images (100%) in 0:00") && lines[9].ends_with(" done"));
    }

    #[test]
    fn a_terminal_gets_one_redrawn_line() {
        let out = Shared::default();
        let mut p = StageProgress::to_sink("tuning", "steps", 1000, true, Box::new(out.clone()));
        let start = Instant::now();
        for done in 1..=1000 {
            p.update(done, "loss 0.5");
        }
        let redraws = (start.elapsed().as_millis() / REDRAW_EVERY.as_millis()) as usize;
        // Monotone: an earlier count does not move the bar back.
        p.update(3, "");
        p.finish("");
        let text = out.text();
        assert!(text.starts_with("\rtuning [") && text.ends_with("\n"), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        // The first update draws, then one a redraw interval of the loop's time at most, and finish.
        let draws = text.matches('\r').count();
        assert!((2..=2 + redraws).contains(&draws), "{draws} draws in {redraws} intervals: {text:?}");
        assert!(text.contains("1000/1000 steps"), "{text:?}");
    }

    #[test]
    fn a_bar_left_unfinished_ends_its_line() {
        let out = Shared::default();
        {
            let mut p = StageProgress::to_sink("tuning", "steps", 10, true, Box::new(out.clone()));
            p.update(1, "");
        }
        assert!(out.text().ends_with('\n'));
    }
}
