//! The rule every path received in a transfer must pass before it touches a file system.
//!
//! A path in a file header is relative to the transfer's root, `/`-separated, and made of
//! plain names only: no empty, `.` or `..` component, no leading `/`, no NUL. Names may hold
//! any other byte (newlines, non-UTF-8), as Unix names may. Symlinks inside the root are never
//! followed while writing (see [`crate::files::sink`]), so a checked path cannot leave the root
//! through a link either.

use std::fmt;

/// Why a received path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path is empty.
    Empty,
    /// The path starts with `/`.
    Absolute,
    /// A component is `..`.
    Parent,
    /// A component is empty (`a//b`, trailing `/`) or `.`.
    NotPlain,
    /// The path holds a NUL byte.
    Nul,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty path",
            Self::Absolute => "absolute path",
            Self::Parent => "path with a '..' component",
            Self::NotPlain => "path with an empty or '.' component",
            Self::Nul => "path with a NUL byte",
        })
    }
}

impl std::error::Error for PathError {}

/// Splits a received relative path into its components, or says why it is refused.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains(&0) {
        return Err(PathError::Nul);
    }
    if path[0] == b'/' {
        return Err(PathError::Absolute);
    }
    path.split(|&b| b == b'/')
        .map(|c| match c {
            b".." => Err(PathError::Parent),
            b"" | b"." => Err(PathError::NotPlain),
            c => Ok(c),
        })
        .collect()
}

/// Whether a symlink at `path` (relative to the root, already checked) with target `target`
/// resolves inside the root, judged by its text alone: not absolute, and no `..` that climbs
/// above the root. With every link in a tree judged so, no chain of links leads out either,
/// since each one's `..` is taken from a real directory inside the root.
pub fn link_stays_inside(path: &[u8], target: &[u8]) -> bool {
    if target.is_empty() || target[0] == b'/' || target.contains(&0) {
        return false;
    }
    // The link's own directory is as deep as its path has components, less the link's name.
    let mut depth = path.split(|&b| b == b'/').count() as i64 - 1;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// A path for messages: lossy UTF-8 with control characters escaped, so a name holding a
/// newline or an escape sequence cannot forge or garble a line of output.
pub fn display(path: &[u8]) -> String {
    let text = String::from_utf8_lossy(path);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_pass() {
        assert_eq!(components(b"a").unwrap(), [b"a"]);
        assert_eq!(components(b"dir/sub/f.txt").unwrap().len(), 3);
        assert_eq!(components(b"new\nline/\xff\xfe").unwrap()[1], b"\xff\xfe");
        assert_eq!(components(b"...").unwrap(), [b"..."]);
        assert_eq!(components(b"..a/b..").unwrap().len(), 2);
    }

    #[test]
    fn escaping_and_odd_paths_are_refused() {
        assert_eq!(components(b""), Err(PathError::Empty));
        assert_eq!(components(b"/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(components(b"//x"), Err(PathError::Absolute));
        assert_eq!(components(b".."), Err(PathError::Parent));
        assert_eq!(components(b"a/../../x"), Err(PathError::Parent));
        assert_eq!(components(b"a/.."), Err(PathError::Parent));
        assert_eq!(components(b"a//b"), Err(PathError::NotPlain));
        assert_eq!(components(b"a/"), Err(PathError::NotPlain));
        assert_eq!(components(b"./a"), Err(PathError::NotPlain));
        assert_eq!(components(b"a\0b"), Err(PathError::Nul));
    }

    #[test]
    fn links_are_judged_by_where_they_lead() {
        assert!(link_stays_inside(b"top/l", b"f"));
        assert!(link_stays_inside(b"top/l", b".."));
        assert!(link_stays_inside(b"top/sub/l", b"../../top/x"));
        assert!(link_stays_inside(b"top/l", b"./a/./b"));
        assert!(!link_stays_inside(b"top/l", b"../.."));
        assert!(!link_stays_inside(b"l", b".."));
        assert!(!link_stays_inside(b"top/l", b"a/../../../etc"));
        assert!(!link_stays_inside(b"top/l", b"/etc/passwd"));
        assert!(!link_stays_inside(b"top/l", b""));
    }

    #[test]
    fn display_escapes_control_characters() {
        assert_eq!(display(b"a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(display(b"caf\xc3\xa9 \xff"), "café \u{fffd}");
    }
}
