//! `cargo xtask man DIR`: writes the man pages `agent.8` and `ctl.1` into DIR.
//!
//! The pages are made from the programs' own clap definitions (their `cli.rs`, compiled in
//! here as well), so a page says what `--help` says: there is no second copy to drift.
//! `scripts/package.sh` runs this before `cargo deb`; tests/integration/manpages.rs checks
//! the pages against the binaries' `--help`.

// Compiled here for the definitions alone: the programs use the rest (fields, defaults).
#[allow(dead_code)]
#[path = "../../agent/src/cli.rs"]
mod agent_cli;
#[allow(dead_code)]
#[path = "../../ctl/src/cli.rs"]
mod ctl_cli;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_mangen::Man;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [task, dir] if task == "man" => match write_pages(Path::new(dir)) {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::from(1)
            }
        },
        _ => {
            eprintln!("usage: cargo xtask man DIR   (writes DIR/agent.8 and DIR/ctl.1)");
            ExitCode::from(2)
        }
    }
}

/// The pages: file name, section, command.
fn pages() -> Vec<(&'static str, &'static str, clap::Command)> {
    // ctl's about line is its package description, which clap would take from this crate's.
    let ctl = ctl_cli::Cli::command()
        .name("ctl")
        .about(description(include_str!("../../ctl/Cargo.toml")));
    vec![
        ("agent.8", "8", agent_cli::Cli::command()),
        ("ctl.1", "1", ctl),
    ]
}

/// The `description` of a Cargo.toml's package.
fn description(manifest: &'static str) -> &'static str {
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("description = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_default()
}

/// Writes every page into `dir` (created if missing); returns the paths written.
fn write_pages(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (file, section, command) in pages() {
        let path = dir.join(file);
        let page = render(command, section).map_err(|e| format!("cannot render {file}: {e}"))?;
        std::fs::write(&path, page).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Renders one page: clap_mangen's title, name, synopsis, description and options; one
/// subsection per subcommand with its synopsis, options and examples; then the after-help
/// text (examples, exit statuses) as sections of their own, laid out as in `--help`.
fn render(mut command: clap::Command, section: &str) -> std::io::Result<Vec<u8>> {
    command.build();
    let version = command.get_version().unwrap_or_default().to_owned();
    let man = Man::new(command.clone())
        .section(section)
        .source(format!("rexec {version}"))
        .manual("rexec");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let subcommands: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if !subcommands.is_empty() {
        writeln!(out, ".SH COMMANDS")?;
        for sub in subcommands {
            let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
            writeln!(out, ".SS \"{}\"", escape(name))?;
            if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
                writeln!(out, "{}", escape_text(&about.to_string()))?;
            }
            let sub_man = Man::new(sub.clone());
            let mut synopsis = Vec::new();
            sub_man.render_synopsis_section(&mut synopsis)?;
            out.extend(demote_headings(&synopsis, None));
            let mut options = Vec::new();
            sub_man.render_options_section(&mut options)?;
            out.extend(demote_headings(&options, Some("Options:")));
            if let Some(after) = sub.get_after_long_help().or_else(|| sub.get_after_help()) {
                after_help(&mut out, &after.to_string(), false)?;
            }
        }
    }
    if let Some(after) = command
        .get_after_long_help()
        .or_else(|| command.get_after_help())
    {
        after_help(&mut out, &after.to_string(), true)?;
    }
    Ok(one_preamble(&out))
}

/// Keeps the first of the preambles that each clap_mangen call writes (the `Aq` string
/// definition), so the page defines it once, before `.TH`.
fn one_preamble(roff: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut seen = false;
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line == r".ie \n(.g .ds Aq \(aq" && lines.peek() == Some(&".el .ds Aq '") {
            lines.next();
            if seen {
                continue;
            }
            seen = true;
            out.push_str(line);
            out.push_str("\n.el .ds Aq '\n");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.into_bytes()
}

/// Turns a rendered section's `.SH` lines into a paragraph break, with `label` in bold if
/// given, so that a subcommand's synopsis and options sit inside its `.SS` subsection.
fn demote_headings(roff: &[u8], label: Option<&str>) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(".SH") {
            out.push_str(".PP\n");
            if let Some(label) = label {
                out.push_str(&format!(".B \"{label}\"\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// Writes after-help text: a line ending in `:` at the left margin starts a section (`.SH`
/// when `top`, else a bold label); the lines under it are kept as they are (no filling), as
/// examples and tables of exit statuses must be.
fn after_help(out: &mut Vec<u8>, text: &str, top: bool) -> std::io::Result<()> {
    let mut in_block = false;
    for line in text.lines() {
        let heading = !line.starts_with(' ') && line.ends_with(':') && !line.trim().is_empty();
        if heading {
            if in_block {
                writeln!(out, ".fi")?;
                in_block = false;
            }
            let title = line.trim_end_matches(':');
            if top {
                writeln!(out, ".SH \"{}\"", escape(&title.to_uppercase()))?;
            } else {
                writeln!(out, ".PP\n.B \"{}:\"", escape(title))?;
            }
            continue;
        }
        if !in_block {
            writeln!(out, ".PP\n.nf")?;
            in_block = true;
        }
        writeln!(out, "{}", escape_text(line))?;
    }
    if in_block {
        writeln!(out, ".fi")?;
    }
    Ok(())
}

/// Escapes text for a roff argument or line: backslashes, and `-` as a real minus so that
/// options copied from the page work.
fn escape(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('"', "\\(dq")
}

/// Escapes a line of running text: as [`escape`], and a leading `.` or `'` (a roff request)
/// made literal.
fn escape_text(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = escape(line);
            if line.starts_with(['.', '\'']) {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_requests_in_text_are_made_literal() {
        assert_eq!(escape_text(".hidden\n'x"), "\\&.hidden\n\\&'x");
        assert_eq!(escape(r"a\b --x"), r"a\eb \-\-x");
    }

    #[test]
    fn after_help_headings_become_sections_and_lines_stay_unfilled() {
        let mut out = Vec::new();
        after_help(&mut out, "Examples:\n  agent --key-file k\n", true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            ".SH \"EXAMPLES\"\n.PP\n.nf\n  agent \\-\\-key\\-file k\n.fi\n"
        );
    }
}
