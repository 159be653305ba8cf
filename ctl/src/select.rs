//! Choosing targets: `-H` lists, `--hosts-file` lines (`TARGET [NAME]`), positional
//! targets, ranges and `@groups` in each, minus `-x`; duplicates by canonical host and port
//! run once. Every entry is checked before anything connects, and a mistake names where it
//! was written (the file and line, or the option).

use std::collections::HashSet;
use std::path::Path;

use crate::config::Config;
use crate::nodeset;
use crate::target::Target;

/// How deep `@group` definitions may refer to other groups.
const MAX_GROUP_DEPTH: usize = 8;

/// Where targets come from.
pub struct Sources<'a> {
    /// Targets given as arguments (ping's, or exec's lone TARGET).
    pub positional: &'a [String],
    /// `-H` values.
    pub hosts: &'a [String],
    /// `--hosts-file`.
    pub hosts_file: Option<&'a Path>,
    /// `-x` values.
    pub exclude: &'a [String],
    /// Port for targets that name none.
    pub port: u16,
    /// Groups and per-host agent names.
    pub config: &'a Config,
}

/// Expands one list (`a,web[1-3],@db`) into target words, resolving groups.
fn words(list: &str, config: &Config, depth: usize, out: &mut Vec<String>) -> Result<(), String> {
    for word in nodeset::split_list(list) {
        if let Some(group) = word.strip_prefix('@') {
            if depth >= MAX_GROUP_DEPTH {
                return Err(format!(
                    "group @{group} nests more than {MAX_GROUP_DEPTH} groups deep (a loop?)"
                ));
            }
            let Some(members) = config.groups.get(group) else {
                let known = config
                    .groups
                    .keys()
                    .map(|g| format!("@{g}"))
                    .collect::<Vec<_>>();
                let place = crate::config::default_path()
                    .map_or_else(|| "the config file".into(), |p| p.display().to_string());
                return Err(match known.is_empty() {
                    true => format!("unknown group @{group}: no [groups] are defined in {place}"),
                    false => format!(
                        "unknown group @{group} (defined in {place}: {})",
                        known.join(" ")
                    ),
                });
            };
            words(members, config, depth + 1, out)
                .map_err(|e| format!("in group @{group}: {e}"))?;
        } else {
            out.extend(nodeset::expand(word)?);
        }
    }
    Ok(())
}

/// Parses `word` as a target with `name` as its agent name (else the config's, if any).
fn target(word: &str, name: Option<&str>, src: &Sources<'_>) -> Result<Target, String> {
    let mut t = Target::parse(word, src.port)?;
    t.name = name
        .map(str::to_owned)
        .or_else(|| src.config.agent_names.get(&t.host).cloned());
    Ok(t)
}

/// The selected targets in the order given, duplicates and exclusions removed.
pub fn select(src: &Sources<'_>) -> Result<Vec<Target>, String> {
    let mut all: Vec<Target> = Vec::new();
    let mut found = Vec::new();
    for list in src.positional {
        found.clear();
        words(list, src.config, 0, &mut found)?;
        for w in &found {
            all.push(target(w, None, src)?);
        }
    }
    for list in src.hosts {
        found.clear();
        words(list, src.config, 0, &mut found).map_err(|e| format!("-H {list}: {e}"))?;
        for w in &found {
            all.push(target(w, None, src).map_err(|e| format!("-H {list}: {e}"))?);
        }
    }
    if let Some(path) = src.hosts_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read hosts file {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let at = |e: String| format!("hosts file {}, line {}: {e}", path.display(), n + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(first), name) = (fields.next(), fields.next()) else {
                continue;
            };
            if let Some(extra) = fields.next() {
                return Err(at(format!(
                    "{extra:?}: a line holds a TARGET and at most an agent NAME"
                )));
            }
            if nodeset::split_list(first).len() > 1 {
                return Err(at(format!(
                    "{first:?}: one target per line (a range such as web[1-3] is one)"
                )));
            }
            found.clear();
            words(first, src.config, 0, &mut found).map_err(at)?;
            if name.is_some() && found.len() != 1 {
                return Err(at(format!(
                    "{first:?} names {} targets; an agent NAME belongs to one",
                    found.len()
                )));
            }
            for w in &found {
                all.push(target(w, name, src).map_err(at)?);
            }
        }
    }
    let mut excluded = HashSet::new();
    for list in src.exclude {
        found.clear();
        words(list, src.config, 0, &mut found).map_err(|e| format!("-x {list}: {e}"))?;
        for w in &found {
            excluded.insert(
                target(w, None, src)
                    .map_err(|e| format!("-x {list}: {e}"))?
                    .key(),
            );
        }
    }
    let mut seen = HashSet::with_capacity(all.len());
    all.retain(|t| {
        let key = t.key();
        !excluded.contains(&key) && seen.insert(key)
    });
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(hosts: &[&str], exclude: &[&str], config: &Config) -> Result<Vec<String>, String> {
        let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        let src = Sources {
            positional: &[],
            hosts: &hosts,
            hosts_file: None,
            exclude: &exclude,
            port: 50007,
            config,
        };
        select(&src).map(|ts| ts.into_iter().map(|t| t.spelling).collect())
    }

    #[test]
    fn ranges_groups_exclusions_and_duplicates() {
        let mut config = Config::default();
        config.groups.insert("web".into(), "web[01-03]".into());
        config.groups.insert("all".into(), "@web,db1".into());
        config.groups.insert("loop".into(), "@loop".into());
        let c = &config;
        assert_eq!(pick(&["n[1,4-5]"], &[], c).unwrap(), ["n1", "n4", "n5"]);
        assert_eq!(
            pick(&["@all"], &["web02"], c).unwrap(),
            ["web01", "web03", "db1"]
        );
        assert_eq!(pick(&["@all", "x"], &["@web"], c).unwrap(), ["db1", "x"]);
        assert_eq!(
            pick(&["web1,WEB1:50007,web1.,web1:2"], &[], c).unwrap(),
            ["web1", "web1:2"]
        );
        assert_eq!(pick(&["[::1]:9,[0::1]:9"], &[], c).unwrap(), ["[::1]:9"]);
        assert!(pick(&["@nope"], &[], c)
            .unwrap_err()
            .contains("unknown group @nope"));
        assert!(pick(&["@loop"], &[], c).unwrap_err().contains("deep"));
        assert!(pick(&["a@b"], &[], c).unwrap_err().contains("policy"));
    }

    #[test]
    fn hosts_file_lines_are_checked_up_front_with_line_numbers() {
        let dir = std::env::temp_dir().join(format!("ctl-select-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hosts");
        let config = Config::default();
        let run = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let src = Sources {
                positional: &[],
                hosts: &[],
                hosts_file: Some(&file),
                exclude: &[],
                port: 1,
                config: &config,
            };
            select(&src)
        };
        let ts = run("# c\n\nweb[1-2]\n10.0.0.5 web5\n").unwrap();
        let got: Vec<_> = ts
            .iter()
            .map(|t| (t.spelling.as_str(), t.name.as_deref()))
            .collect();
        assert_eq!(
            got,
            [("web1", None), ("web2", None), ("10.0.0.5", Some("web5"))]
        );
        let err = run("ok\n127.0.0.6,127.0.0.7\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("one target"),
            "{err}"
        );
        let err = run("a b c\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("at most"), "{err}");
        let err = run("\nweb[1-2] name\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("belongs to one"),
            "{err}"
        );
        let err = run("web[2-1]\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("backwards"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
