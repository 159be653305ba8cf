//! Host lists as clush and pdsh users write them: `web[01-20]`, `n[1,4-5]`, several ranges
//! per name (`r[1-2]n[1-3]`), and the reverse, folding a list of names back into that form
//! (`127.0.0.[2-21]`) for summaries and `--group` headers. ClusterShell's NodeSet is the
//! reference for both.
//!
//! A bracket at the start of a word that holds a `:` is an IPv6 address (`[::1]:50007`),
//! not a range.

use std::collections::BTreeMap;

/// Most names one word may expand to, so a typo such as `n[1-99999999]` is refused instead
/// of exhausting memory.
pub const MAX_EXPANSION: u64 = 10_000_000;

/// Splits a list such as `web[01-03],db1` at the commas outside brackets.
pub fn split_list(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                words.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    words.push(text[start..].trim());
    words.into_iter().filter(|w| !w.is_empty()).collect()
}

/// One piece of a word: literal text, or a bracketed set of numbers.
#[derive(Debug, Clone)]
enum Piece<'a> {
    Text(&'a str),
    /// Inclusive ranges, each with the width its numbers are padded to (0: none).
    Ranges(Vec<(u64, u64, usize)>),
}

/// Parses a range body such as `01-03,7`.
fn parse_ranges(body: &str) -> Result<Vec<(u64, u64, usize)>, String> {
    let mut ranges = Vec::new();
    for part in body.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi) = (lo.trim(), hi.trim());
        let number = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{part:?} in [{body}] is not a number or a range N-M"
                ));
            }
            s.parse()
                .map_err(|_| format!("{s:?} in [{body}] is too large"))
        };
        let (a, b) = (number(lo)?, number(hi)?);
        if a > b {
            return Err(format!("range {part:?} in [{body}] goes backwards"));
        }
        // Padding comes from the first bound as written: `01-10` is 01..10, `1-10` is 1..10.
        let width = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        ranges.push((a, b, width));
    }
    Ok(ranges)
}

/// Whether a word starting with `[` is an IPv6 address in brackets.
fn is_bracketed_address(word: &str) -> bool {
    word.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(inside, _)| inside.contains(':'))
}

/// Expands one word (`web[01-03]`, `n[1,4-5]p[1-2]`, `[::1]:9`) into its names, in order.
pub fn expand(word: &str) -> Result<Vec<String>, String> {
    if !word.contains('[') && !word.contains(']') || is_bracketed_address(word) {
        return Ok(vec![word.to_owned()]);
    }
    let mut pieces = Vec::new();
    let mut rest = word;
    while !rest.is_empty() {
        match rest.find(['[', ']']) {
            None => {
                pieces.push(Piece::Text(rest));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b']' => {
                return Err(format!("invalid range in {word:?}: ']' without '['"));
            }
            Some(i) => {
                if i > 0 {
                    pieces.push(Piece::Text(&rest[..i]));
                }
                let after = &rest[i + 1..];
                let end = after
                    .find(']')
                    .ok_or_else(|| format!("invalid range in {word:?}: '[' without ']'"))?;
                let body = &after[..end];
                if body.contains('[') {
                    return Err(format!("invalid range in {word:?}: nested '['"));
                }
                let ranges =
                    parse_ranges(body).map_err(|e| format!("invalid range in {word:?}: {e}"))?;
                pieces.push(Piece::Ranges(ranges));
                rest = &after[end + 1..];
            }
        }
    }
    let mut count: u64 = 1;
    for piece in &pieces {
        if let Piece::Ranges(ranges) = piece {
            let n: u64 = ranges.iter().map(|(a, b, _)| b - a + 1).sum();
            count = count.saturating_mul(n);
        }
    }
    if count > MAX_EXPANSION {
        return Err(format!(
            "{word:?} expands to {count} names, more than the {MAX_EXPANSION} allowed"
        ));
    }
    let mut names = vec![String::new()];
    for piece in &pieces {
        names = match piece {
            Piece::Text(text) => names.into_iter().map(|n| n + text).collect(),
            Piece::Ranges(ranges) => {
                let mut next = Vec::new();
                for name in &names {
                    for &(a, b, width) in ranges {
                        for v in a..=b {
                            next.push(format!("{name}{v:0width$}"));
                        }
                    }
                }
                next
            }
        };
    }
    Ok(names)
}

/// A name cut into its literal text and its digit runs: `r1n07` is `r`, `1`, `n`, `07`.
#[derive(Debug, Clone)]
struct Cut<'a> {
    texts: Vec<&'a str>,
    digits: Vec<&'a str>,
}

fn cut(name: &str) -> Cut<'_> {
    let (mut texts, mut digits) = (Vec::new(), Vec::new());
    let bytes = name.as_bytes();
    let mut i = 0;
    let mut text_start = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            texts.push(&name[text_start..start]);
            digits.push(&name[start..i]);
            text_start = i;
        } else {
            i += 1;
        }
    }
    texts.push(&name[text_start..]);
    Cut { texts, digits }
}

/// Folds numbers (as written) into range text: `1,2,3,5` is `1-3,5`, `01,02` is `01-02`.
fn fold_numbers(numbers: &mut [&str]) -> String {
    let value = |s: &str| s.parse::<u128>().unwrap_or(u128::MAX);
    numbers.sort_by_key(|s| (value(s), s.len()));
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let first = numbers[i];
        let width = if first.len() > 1 && first.starts_with('0') {
            first.len()
        } else {
            0
        };
        let mut last = first;
        let mut j = i + 1;
        while j < numbers.len() {
            let v = value(last).saturating_add(1);
            if value(numbers[j]) == v && numbers[j] == format!("{v:0width$}") {
                last = numbers[j];
                j += 1;
            } else {
                break;
            }
        }
        out.push(if first == last {
            first.to_owned()
        } else {
            format!("{first}-{last}")
        });
        i = j;
    }
    out.join(",")
}

/// Folds `names` into the shortest list of words that [`expand`] turns back into them, e.g.
/// `web01,web02,web03,db1` into `db1,web[01-03]`, the words sorted. Each name is folded along
/// one of its digit runs: the one that merges the most names.
pub fn fold<S: AsRef<str>>(names: &[S]) -> String {
    // Names with brackets (IPv6 addresses) or without digits stand alone.
    let mut words: Vec<String> = Vec::new();
    // Names by their shape: the literal texts between digit runs.
    let mut shapes: BTreeMap<Vec<&str>, Vec<Cut<'_>>> = BTreeMap::new();
    for name in names {
        let name = name.as_ref();
        let c = cut(name);
        if c.digits.is_empty() || name.contains(['[', ']', ',']) {
            words.push(name.to_owned());
        } else {
            shapes.entry(c.texts.clone()).or_default().push(c);
        }
    }
    for (_, cuts) in shapes {
        let runs = cuts[0].digits.len();
        // The digit run that leaves the fewest words when the others are held fixed.
        let groups_along = |dim: usize| {
            let mut groups: BTreeMap<Vec<&str>, Vec<&str>> = BTreeMap::new();
            for c in &cuts {
                let mut key = c.digits.clone();
                key.remove(dim);
                groups.entry(key).or_default().push(c.digits[dim]);
            }
            groups
        };
        let dim = (0..runs)
            .rev()
            .min_by_key(|&d| groups_along(d).len())
            .unwrap_or(0);
        let texts = &cuts[0].texts;
        for (others, mut numbers) in groups_along(dim) {
            numbers.sort_unstable();
            numbers.dedup();
            let folded = if numbers.len() == 1 {
                numbers[0].to_owned()
            } else {
                format!("[{}]", fold_numbers(&mut numbers))
            };
            let mut word = String::new();
            let mut others = others.into_iter();
            for (k, text) in texts.iter().enumerate() {
                word += text;
                if k < runs {
                    if k == dim {
                        word += &folded;
                    } else {
                        word += others.next().unwrap_or_default();
                    }
                }
            }
            words.push(word);
        }
    }
    words.sort();
    words.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(word: &str) -> Vec<String> {
        expand(word).unwrap()
    }

    fn all(list: &str) -> Vec<String> {
        split_list(list)
            .into_iter()
            .flat_map(|w| expand(w).unwrap())
            .collect()
    }

    #[test]
    fn ranges_expand_with_padding_kept() {
        assert_eq!(ex("web[01-03]"), ["web01", "web02", "web03"]);
        assert_eq!(ex("n[1,4-5]"), ["n1", "n4", "n5"]);
        assert_eq!(ex("cluster[0-10]").len(), 11);
        assert_eq!(ex("cluster[0001-0100]")[99], "cluster0100");
        assert_eq!(ex("cluster[50-99]-ipmi")[0], "cluster50-ipmi");
        assert_eq!(ex("[0]cluster"), ["0cluster"]);
        assert_eq!(ex("cluster[115]"), ["cluster115"]);
        assert_eq!(ex("clu-0-[3-4]"), ["clu-0-3", "clu-0-4"]);
        assert_eq!(ex("web[9-10]"), ["web9", "web10"]);
        assert_eq!(
            ex("cluster[0001,0002,1555-1556]-ipmi"),
            [
                "cluster0001-ipmi",
                "cluster0002-ipmi",
                "cluster1555-ipmi",
                "cluster1556-ipmi"
            ]
        );
    }

    #[test]
    fn several_ranges_multiply_out() {
        assert_eq!(ex("r[1-2]n[1-2]"), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(ex("10.0.[0-1].[1-2]:9").len(), 4);
        assert_eq!(ex("x[1-2]y[1-3]z[1-4]").len(), 24);
    }

    #[test]
    fn ipv6_brackets_are_addresses() {
        assert_eq!(ex("[::1]:50007"), ["[::1]:50007"]);
        assert_eq!(ex("[fe80::1]"), ["[fe80::1]"]);
        assert_eq!(split_list("[::1]:1,web[1-2]"), ["[::1]:1", "web[1-2]"]);
        assert_eq!(all("[::1]:1,web[1-2]"), ["[::1]:1", "web1", "web2"]);
    }

    #[test]
    fn bad_ranges_say_why() {
        for (bad, why) in [
            ("web[1-", "without ']'"),
            ("web1]", "without '['"),
            ("web[3-1]", "backwards"),
            ("web[a-b]", "not a number"),
            ("web[]", "not a number"),
            ("web[1-99999999999]", "more than"),
            ("web[[1]]", "nested"),
        ] {
            let err = expand(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn lists_split_outside_brackets() {
        assert_eq!(split_list("a,b[1,2],c"), ["a", "b[1,2]", "c"]);
        assert_eq!(split_list(" a , ,b "), ["a", "b"]);
        assert!(split_list("").is_empty());
    }

    #[test]
    fn folding_follows_clustershell() {
        let f = |list: &str| fold(&all(list));
        assert_eq!(
            f("cluster115,cluster116,cluster117,cluster130,cluster166"),
            "cluster[115-117,130,166]"
        );
        assert_eq!(
            f("cluster0,cluster1,cluster2,cluster5,cluster8,cluster4,cluster3"),
            "cluster[0-5,8]"
        );
        assert_eq!(
            f("cluster0,cluster1,cluster,wool,cluster3"),
            "cluster,cluster[0-1,3],wool"
        );
        assert_eq!(
            f("cluster[0001,0002,1555-1559]"),
            "cluster[0001-0002,1555-1559]"
        );
        assert_eq!(f("cluster[50-99]-ipmi"), "cluster[50-99]-ipmi");
        assert_eq!(f("tigrou2,tigrou7,tigrou[5,9-11]"), "tigrou[2,5,7,9-11]");
        assert_eq!(
            f("cluster3,cluster5,tiger5,tiger7"),
            "cluster[3,5],tiger[5,7]"
        );
        assert_eq!(f("clu-0-[3-23]"), "clu-0-[3-23]");
        assert_eq!(f("cluster008"), "cluster008");
        assert_eq!(f("127.0.0.[2-21]"), "127.0.0.[2-21]");
        assert_eq!(f("web[01-20],db1"), "db1,web[01-20]");
        assert_eq!(f("web[9-10]"), "web[9-10]");
        assert_eq!(f("web[09-10]"), "web[09-10]");
        // Two dimensions: folded along the one that varies.
        assert_eq!(f("127.0.0.1:[4000-4002]"), "127.0.0.1:[4000-4002]");
        assert_eq!(f("127.0.0.[1-3]:4000"), "127.0.0.[1-3]:4000");
        assert_eq!(f("[::1]:9,h1"), "[::1]:9,h1");
        assert_eq!(fold::<&str>(&[]), "");
    }

    #[test]
    fn folding_round_trips() {
        for list in [
            "web[1,01,001]",
            "n[1-3,5,7-9],m[08-12]",
            "r[1-3]n[1-4]",
            "a1b2,a1b3,a2b2",
            "x9,x10,x010,x11",
            "h,h0,h00,h000",
        ] {
            let mut names = all(list);
            let folded = fold(&names);
            let mut back = all(&folded);
            names.sort();
            back.sort();
            assert_eq!(back, names, "{list} folded to {folded}");
        }
    }
}
