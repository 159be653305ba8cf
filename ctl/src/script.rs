//! `ctl exec --script FILE`: the command line that runs a local script, sent on stdin, with
//! the interpreter its `#!` line names, and the script's identity for the agent's audit.

use rexec_shared::message::ScriptInfo;
use sha2::{Digest, Sha256};

/// The interpreter a script's first line names, as the kernel reads it: the path after `#!`,
/// and the rest of the line as one optional argument.
fn interpreter(script: &[u8]) -> Option<(String, Option<String>)> {
    let line = script.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r').trim_matches([' ', '\t']);
    let (path, arg) = match line.split_once([' ', '\t']) {
        Some((path, arg)) => (path, Some(arg.trim_matches([' ', '\t']))),
        None => (line, None),
    };
    if path.is_empty() {
        return None;
    }
    Some((
        path.to_owned(),
        arg.filter(|a| !a.is_empty()).map(str::to_owned),
    ))
}

/// The remote command that runs `script` (which arrives on stdin) with `args`: its `#!`
/// interpreter reading the script from `/dev/stdin` (`#!/usr/bin/env python3` becomes
/// `exec '/usr/bin/env' 'python3' /dev/stdin ARGS`), or `sh -s -- ARGS` without one.
pub fn command_line(script: &[u8], args: &[String]) -> String {
    let mut words = match interpreter(script) {
        Some((path, arg)) => {
            let mut w = vec!["exec".to_owned(), shell_quote(&path)];
            w.extend(arg.as_deref().map(shell_quote));
            w.push("/dev/stdin".to_owned());
            w
        }
        None => vec!["sh".to_owned(), "-s".to_owned(), "--".to_owned()],
    };
    words.extend(args.iter().map(|a| shell_quote(a)));
    words.join(" ")
}

/// The script's name and digest, as the agent records them.
pub fn info(name: &std::path::Path, script: &[u8]) -> ScriptInfo {
    use std::os::unix::ffi::OsStrExt;
    ScriptInfo {
        name: name.as_os_str().as_bytes().to_vec(),
        digest: Sha256::digest(script).into(),
    }
}

/// Quotes a word for `sh` so it arrives as one argument.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shebang_picks_the_interpreter() {
        let args = ["a b".to_owned(), "it's".to_owned()];
        assert_eq!(
            command_line(b"#!/bin/bash\narr=(1 2)\n", &args),
            r"exec '/bin/bash' /dev/stdin 'a b' 'it'\''s'"
        );
        assert_eq!(
            command_line(b"#! /usr/bin/env python3\r\nprint(1)\n", &[]),
            "exec '/usr/bin/env' 'python3' /dev/stdin"
        );
        assert_eq!(
            command_line(b"#!/usr/bin/env -S perl -w\n", &[]),
            "exec '/usr/bin/env' '-S perl -w' /dev/stdin"
        );
        assert_eq!(
            command_line(b"echo hi\n", &args),
            r"sh -s -- 'a b' 'it'\''s'"
        );
        assert_eq!(command_line(b"#!\necho\n", &[]), "sh -s --");
        assert_eq!(command_line(b"", &[]), "sh -s --");
    }

    #[test]
    fn info_names_the_script_and_its_digest() {
        let i = info(std::path::Path::new("deploy.sh"), b"abc");
        assert_eq!(i.name, b"deploy.sh");
        assert_eq!(
            i.digest[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256 of \"abc\" starts ba7816bf"
        );
    }
}
