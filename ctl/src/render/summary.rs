//! The summary line a many-target run ends with, e.g.
//! `ctl: 10 targets: 7 ok, 2 failed (exit 1: web3; exit 2: web7), 1 unreachable (web9)`.
//!
//! Built as targets finish: only the names of targets that did not succeed are kept.

use std::collections::BTreeMap;

use crate::engine::Unstarted;
use crate::nodeset;
use crate::outcome::{Ending, Failure};

/// How many folded words (`web[01-09]` is one) the summary shows per kind of failure before
/// it says how many more targets there are.
const SUMMARY_NAMES: usize = 20;

/// Targets named by the order they were given in, with their spelling.
type Names = Vec<(usize, String)>;

/// The tally of a run so far.
#[derive(Debug, Default)]
pub struct Summary {
    ok: usize,
    /// Reached but not successful, by (exit status, label).
    failed: BTreeMap<(u8, String), Names>,
    unreachable: Names,
    skipped: Vec<String>,
    why_skipped: Option<Unstarted>,
}

impl Summary {
    /// Counts target number `index` (in the order given), spelled `name`, as `ending` says.
    pub fn record(&mut self, index: usize, name: &str, ending: &Ending) {
        let code = ending.exit_code();
        let label = match ending {
            Ending::Exited(0) => {
                self.ok += 1;
                return;
            }
            Ending::Failed(Failure::Connect(_) | Failure::Auth(_)) => {
                self.unreachable.push((index, name.to_owned()));
                return;
            }
            Ending::Failed(Failure::Stream(_) | Failure::Agent(_)) => "error".to_owned(),
            Ending::TimedOut(_) | Ending::Unanswered => "timed out".to_owned(),
            Ending::Exited(n) => format!("exit {n}"),
            Ending::Killed(sig) => format!("signal {sig}"),
            Ending::AgentShutdown { by, .. } => super::shutdown_label(*by),
        };
        self.failed
            .entry((code, label))
            .or_default()
            .push((index, name.to_owned()));
    }

    /// Counts a target whose result is not a command's ending (a file transfer): `code` 0 is
    /// ok, `unreachable` puts it with the targets that could not be reached or authenticated,
    /// anything else is failed under `label`.
    pub fn record_status(
        &mut self,
        index: usize,
        name: &str,
        code: u8,
        unreachable: bool,
        label: &str,
    ) {
        if code == 0 {
            self.ok += 1;
        } else if unreachable {
            self.unreachable.push((index, name.to_owned()));
        } else {
            self.failed
                .entry((code, label.to_owned()))
                .or_default()
                .push((index, name.to_owned()));
        }
    }

    /// Counts `names`, never started for the reason given.
    pub fn skipped(&mut self, names: Vec<String>, why: Unstarted) {
        self.skipped = names;
        self.why_skipped = Some(why);
    }

    /// The summary line, without a newline.
    pub fn line(&mut self) -> String {
        let failed: usize = self.failed.values().map(Vec::len).sum();
        let total = self.ok + failed + self.unreachable.len() + self.skipped.len();
        let plural = if total == 1 { "" } else { "s" };
        let mut line = format!(
            "ctl: {total} target{plural}: {} ok, {failed} failed",
            self.ok
        );
        if failed > 0 {
            let parts: Vec<String> = self
                .failed
                .iter_mut()
                .map(|((_, label), names)| format!("{label}: {}", list(names)))
                .collect();
            line += &format!(" ({})", parts.join("; "));
        }
        line += &format!(", {} unreachable", self.unreachable.len());
        if !self.unreachable.is_empty() {
            line += &format!(" ({})", list(&mut self.unreachable));
        }
        if !self.skipped.is_empty() {
            let why = match self.why_skipped {
                Some(Unstarted::MaxFail(n)) => format!("--max-fail reached after {n} failed"),
                _ => "stopped first".into(),
            };
            let mut names: Names = self.skipped.iter().cloned().enumerate().collect();
            line += &format!(
                ", {} not started ({why}: {})",
                self.skipped.len(),
                list(&mut names)
            );
        }
        line
    }
}

/// The names folded into ranges (`127.0.0.[2-21]`), the first [`SUMMARY_NAMES`] words of
/// them, then how many more targets.
fn list(names: &mut Names) -> String {
    let folded = nodeset::fold(&names.iter().map(|(_, n)| n).collect::<Vec<_>>());
    let words = nodeset::split_list(&folded);
    if words.len() <= SUMMARY_NAMES {
        return words.join(",");
    }
    let shown = &words[..SUMMARY_NAMES];
    let counted: usize = shown
        .iter()
        .map(|w| nodeset::expand(w).map_or(1, |n| n.len()))
        .sum();
    format!(
        "{} and {} more",
        shown.join(","),
        names.len().saturating_sub(counted)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_and_names() {
        let mut s = Summary::default();
        let endings = [
            Ending::Exited(0),
            Ending::Exited(2),
            Ending::Exited(1),
            Ending::Failed(Failure::Connect("no".into())),
            Ending::Exited(1),
            Ending::TimedOut(Some(9)),
        ];
        // Finishing order differs from the order given; names follow the order given.
        for i in [5, 4, 3, 2, 1, 0] {
            s.record(i, ["a", "b", "c", "d", "e", "f"][i], &endings[i]);
        }
        assert_eq!(
            s.line(),
            "ctl: 6 targets: 1 ok, 4 failed (exit 1: c,e; exit 2: b; timed out: f), 1 unreachable (d)"
        );
        let mut files = Summary::default();
        files.record_status(0, "a", 0, false, "");
        files.record_status(1, "b", 1, false, "files not copied");
        files.record_status(2, "c", 255, true, "");
        assert_eq!(
            files.line(),
            "ctl: 3 targets: 1 ok, 1 failed (files not copied: b), 1 unreachable (c)"
        );
        let mut one = Summary::default();
        one.record(0, "a", &Ending::Exited(0));
        assert_eq!(one.line(), "ctl: 1 target: 1 ok, 0 failed, 0 unreachable");
        one.skipped(vec!["n2".into(), "n1".into()], Unstarted::MaxFail(1));
        assert_eq!(
            one.line(),
            "ctl: 3 targets: 1 ok, 0 failed, 0 unreachable, \
             2 not started (--max-fail reached after 1 failed: n[1-2])"
        );
    }

    #[test]
    fn summary_folds_and_shortens_long_lists() {
        let mut s = Summary::default();
        for i in 0..30 {
            let auth = Ending::Failed(Failure::Auth("x".into()));
            s.record(i, &format!("h{i}"), &auth);
        }
        let line = s.line();
        assert!(line.ends_with("unreachable (h[0-29])"), "{line}");
        let mut s = Summary::default();
        for i in 0..30 {
            s.record(i, &format!("host{}", "x".repeat(i + 1)), &Ending::Exited(3));
        }
        let line = s.line();
        assert!(line.contains("exit 3: hostx,hostxx,"), "{line}");
        assert!(line.ends_with(" and 10 more), 0 unreachable"), "{line}");
        let mut s = Summary::default();
        for (i, t) in ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().enumerate() {
            s.record(i, t, &Ending::Exited(1));
        }
        assert!(s.line().contains("(exit 1: 127.0.0.[2-4])"), "{}", s.line());
    }
}
