//! Man pages: `cargo xtask man` writes roff that groff and man render without a warning, and
//! every long option the binaries' `--help` lists (each ctl subcommand's too) is in the page.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::util::{bin, have, run_bounded, scratch};

const WAIT: Duration = Duration::from_secs(60);

/// Writes the pages into a scratch directory with the real xtask.
fn generate() -> tempfile::TempDir {
    let dir = scratch();
    let out = run_bounded(
        bin("xtask"),
        &["man".as_ref(), dir.path().as_os_str()],
        WAIT,
    );
    assert!(
        out.status.success(),
        "xtask man failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// `--long` options in a help text.
fn long_options(help: &str) -> BTreeSet<String> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| {
            w.strip_prefix("--")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_lowercase()))
        })
        .map(str::to_owned)
        .collect()
}

/// The `--help` text of `program ARGS... --help`.
fn help(program: &str, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--help");
    let out = run_bounded(bin(program), &all, WAIT);
    assert!(out.status.success(), "{program} {all:?} failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The page rendered as plain text by groff (no hyphenation, no overstriking), after checking
/// that groff warns about nothing.
fn render(page: &Path) -> String {
    let out = run_bounded(
        "groff",
        &[
            "-man".as_ref(),
            "-Tascii".as_ref(),
            "-ww".as_ref(),
            "-rHY=0".as_ref(),
            "-P-cbou".as_ref(),
            page.as_os_str(),
        ],
        WAIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "groff on {} failed or warned: {stderr}",
        page.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks one page against the help texts of the invocations given.
fn check_page(page: &Path, program: &str, invocations: &[Vec<&str>]) {
    let roff = std::fs::read_to_string(page)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
    assert!(
        roff.contains("\n.TH ") && roff.contains(".SH NAME") && roff.contains(".SH OPTIONS"),
        "{} is not a man page:\n{roff}",
        page.display()
    );
    if !have("groff") {
        eprintln!("SKIP rendering {}: groff is not installed", page.display());
        return;
    }
    let text = render(page);
    for args in invocations {
        for option in long_options(&help(program, args)) {
            assert!(
                text.contains(&option),
                "{option} (from `{program} {} --help`) is missing from {}:\n{text}",
                args.join(" "),
                page.display()
            );
        }
    }
    if have("man") {
        let out = run_bounded(
            "man",
            &[
                "-l".as_ref(),
                "-P".as_ref(),
                "cat".as_ref(),
                page.as_os_str(),
            ],
            WAIT,
        );
        assert!(
            out.status.success() && out.stdout.len() > 500,
            "man -l {} failed: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn agent_page_renders_and_lists_every_option_of_its_help() {
    let dir = generate();
    check_page(&dir.path().join("agent.8"), "agent", &[vec![]]);
}

#[test]
fn ctl_page_renders_and_lists_every_option_of_every_subcommand() {
    let dir = generate();
    let top = help("ctl", &[]);
    let subcommands = subcommands(&top);
    assert!(
        subcommands.iter().any(|s| s == "exec"),
        "no subcommands found in ctl --help:\n{top}"
    );
    let mut invocations = vec![vec![]];
    invocations.extend(subcommands.iter().map(|s| vec![s.as_str()]));
    check_page(&dir.path().join("ctl.1"), "ctl", &invocations);
}

/// The subcommands a `--help` lists under `Commands:` (`help` left out).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn long_options_are_found_in_help_text() {
    let found = long_options("  --key-file <PATH>  Key file\n  -P, --parallel <N>  see --help\n");
    let expected: BTreeSet<String> = ["--help", "--key-file", "--parallel"]
        .map(String::from)
        .into();
    assert_eq!(found, expected);
}
