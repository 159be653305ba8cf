//! `ctl deploy`: installs and starts the agent on hosts through the system `ssh` client, the
//! one trust path a fresh server already has.
//!
//! Each host gets one ssh connection running `sh -s` (as root, else through `sudo -n`). The
//! script it reads on stdin is built here by [`script`], a pure function: it carries the agent
//! binary (base64) and the key file enrolled for the host's name in here-documents, so the
//! secret travels over ssh's stdin and never on a command line. The script reports on stdout
//! in `rexec-deploy: ...` lines, which [`parse_report`] reads. Then ctl pings the new agent.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rexec_shared::keyfile::KeyEntry;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::engine::Job;
use crate::outcome::Failure;
use crate::output::Output;
use crate::remote;
use crate::target::Target;

/// The systemd unit the repository ships; its ExecStart is set per host.
const UNIT: &str = include_str!("../../agent/agent.service");
/// The unit's ExecStart line as shipped.
const UNIT_EXEC_START: &str =
    "ExecStart=/usr/local/bin/agent --key-file /etc/rexec/keys --listen 0.0.0.0:50007";
/// Prefix of the report lines the remote script writes.
const REPORT: &str = "rexec-deploy: ";
/// How long the ping after a deploy keeps trying: a unit started by systemd may take a moment
/// to listen.
const PING_PATIENCE: Duration = Duration::from_secs(15);

/// The agent key-file contents for `target`: the line `ctl enroll` prints for the name ctl
/// will expect there (its `NAME` field, else its host), derived from the client's master key,
/// which never leaves this machine.
pub fn agent_key_file(key: &KeyEntry, target: &Target) -> Result<Zeroizing<String>, String> {
    let name = target.expected_name()?;
    Ok(crate::enroll::lines(key, &[name]))
}

/// Everything that is the same for every host.
pub struct Deploy {
    /// The client key: pinged with, and enrolled on each host.
    pub key: KeyEntry,
    /// The ssh program and the arguments that come before the host.
    pub ssh: Vec<String>,
    /// The agent binary, base64-encoded once for all hosts.
    pub agent_b64: Arc<str>,
    /// Install under this directory instead of `/`.
    pub root: Option<String>,
    /// `--listen`, if given; else 0.0.0.0 and the target's port.
    pub listen: Option<std::net::SocketAddr>,
    /// Write the key file even where it holds this key id.
    pub replace_keys: bool,
    /// Bound on ssh connecting, and on each ping.
    pub connect_timeout: Duration,
}

/// What one host's deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// How the agent runs there.
    pub started: Started,
    /// What happened to the key file.
    pub keys: String,
    /// The agent's `--version`, as it printed it there.
    pub version: String,
    /// The port the agent said it listens on, when it said (background starts).
    pub port: Option<u16>,
}

/// How the agent was started on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// As `rexec-agent.service`.
    Systemd,
    /// In the background, with this pid; `no_systemd` when that was because the host has none.
    Background { pid: u32, no_systemd: bool },
}

/// How one host's deploy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Installed, started and answering: the report and the ping's round trip.
    Ok(Report, Duration),
    /// A step on the host failed (no sudo, disk full, ...): nothing is listening anew.
    Refused(String),
    /// ssh could not reach or log in to the host, or the new agent did not answer the ping.
    Unreachable(Failure),
}

impl Deploy {
    /// The address the agent listens on at `target`.
    fn listen_for(&self, target: &Target) -> String {
        match self.listen {
            Some(addr) => addr.to_string(),
            None => format!("0.0.0.0:{}", target.port),
        }
    }

    /// The script for `target`, as [`script`] builds it.
    pub fn script_for(&self, target: &Target) -> Result<String, String> {
        let key_file = agent_key_file(&self.key, target)?;
        Ok(script(&Params {
            root: self.root.as_deref(),
            listen: &self.listen_for(target),
            key_id: &self.key.id,
            key_file: &key_file,
            agent_b64: &self.agent_b64,
            replace_keys: self.replace_keys,
        }))
    }

    /// The command ssh runs on the host: `sh -s`, through `sudo -n` unless already root (not
    /// under `--root`, whose directory is the ssh user's own).
    fn remote_command(&self) -> &'static str {
        if self.root.is_some() {
            "sh -s"
        } else {
            "sh -c 'if [ \"$(id -u)\" = 0 ]; then exec sh -s; else exec sudo -n sh -s; fi'"
        }
    }

    /// The ssh command line for `target` (the host alone: ssh's own config or options give
    /// the user and port).
    pub fn ssh_command(&self, target: &Target) -> Vec<String> {
        let mut argv = self.ssh.clone();
        argv.extend([
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
            "--".into(),
            target.host.clone(),
            self.remote_command().into(),
        ]);
        argv
    }

    /// What `--dry-run` prints for `target`.
    pub fn dry_run(&self, target: &Target) -> Vec<String> {
        let root = self.root.as_deref().unwrap_or("");
        let ssh = self
            .ssh_command(target)
            .iter()
            .map(|w| crate::shell_quote_if_needed(w))
            .collect::<Vec<_>>()
            .join(" ");
        let start = if self.root.is_some() {
            format!(
                "start {root}/usr/local/bin/agent in the background (--root: no systemd), \
                 listening on {}",
                self.listen_for(target)
            )
        } else {
            format!(
                "install, enable and restart rexec-agent.service listening on {} \
                 (without systemd: start in the background)",
                self.listen_for(target)
            )
        };
        let keys = if self.replace_keys {
            "replace"
        } else {
            "write (kept where it holds this key id)"
        };
        vec![
            format!("would run: {ssh}  (the script below on its stdin)"),
            format!(
                "would copy the agent ({} bytes) to {root}/usr/local/bin/agent",
                self.agent_b64.len() / 4 * 3
                    - self
                        .agent_b64
                        .bytes()
                        .rev()
                        .take_while(|&b| b == b'=')
                        .count()
            ),
            format!(
                "would {keys} {root}/etc/rexec/keys with key {:?} enrolled for {:?}",
                self.key.id, target.host
            ),
            format!("would {start}"),
            format!("would ping {}", target.spelling),
        ]
    }
}

impl Job for Deploy {
    type Done = Done;

    fn failed(done: &Done) -> bool {
        !matches!(done, Done::Ok(..))
    }

    async fn run<S: Output + Send>(
        &self,
        target: &Target,
        _sink: &mut S,
        mut stop: watch::Receiver<Option<i32>>,
    ) -> Done {
        let argv = self.ssh_command(target);
        let script = match self.script_for(target) {
            Ok(script) => script,
            Err(e) => return Done::Refused(e),
        };
        let ran = tokio::select! {
            ran = run_ssh(&argv, script.into_bytes()) => ran,
            _ = stop.wait_for(Option::is_some) => {
                return Done::Refused("stopped before the deploy finished".into())
            }
        };
        let (status, stdout, stderr) = match ran {
            Ok(ran) => ran,
            Err(e) => {
                return Done::Refused(format!("cannot run {:?}: {e}", argv[0]));
            }
        };
        let report = match parse_report(status, &stdout, &stderr) {
            Ok(report) => report,
            Err(done) => return done,
        };
        let ping_target = Target {
            port: report.port.unwrap_or(target.port),
            ..target.clone()
        };
        let deadline = Instant::now() + PING_PATIENCE.max(self.connect_timeout);
        loop {
            match remote::ping(
                &ping_target,
                &self.key,
                self.connect_timeout,
                0,
                stop.clone(),
            )
            .await
            {
                Ok(pong) => return Done::Ok(report, pong.rtt),
                Err(e) if Instant::now() >= deadline || matches!(e, Failure::Auth(_)) => {
                    return Done::Unreachable(Failure::Connect(format!(
                        "deployed, but the new agent did not answer a ping on port {}: {e}",
                        ping_target.port
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Runs ssh with `input` on its stdin; returns its exit code and output.
async fn run_ssh(
    argv: &[String],
    input: Vec<u8>,
) -> std::io::Result<(Option<i32>, String, String)> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // ssh that failed to connect closes its stdin early: the error is in its status.
            let _ = stdin.write_all(&input).await;
        }
        drop(stdin);
    };
    let (out, ()) = tokio::join!(child.wait_with_output(), feed);
    let out = out?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Reads the remote script's report lines and ssh's status into a [`Report`], or the
/// [`Done`] that says why there is none.
pub fn parse_report(status: Option<i32>, stdout: &str, stderr: &str) -> Result<Report, Done> {
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(REPORT))
        .collect();
    let last_err = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if let Some(error) = lines.iter().find_map(|l| l.strip_prefix("error ")) {
        return Err(Done::Refused(error.to_owned()));
    }
    if lines.is_empty() {
        return Err(match status {
            Some(255) => Done::Unreachable(Failure::Connect(format!(
                "ssh failed: {}",
                if last_err.is_empty() {
                    "exit status 255"
                } else {
                    last_err
                }
            ))),
            _ if stderr.contains("sudo:") => Done::Refused(format!(
                "no sudo: the ssh user is not root and `sudo -n` refused ({last_err})"
            )),
            _ => Done::Refused(format!(
                "the deploy script did not run (exit status {}): {last_err}",
                status.map_or("none".into(), |s| s.to_string())
            )),
        });
    }
    let value = |key: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(str::to_owned)
    };
    let started = match value("started").as_deref().map(str::split_whitespace) {
        Some(mut words) => match (words.next(), words.next(), words.next()) {
            (Some("systemd"), _, _) => Started::Systemd,
            (Some(how @ ("background" | "no-systemd")), Some(pid), _) => Started::Background {
                pid: pid.parse().unwrap_or(0),
                no_systemd: how == "no-systemd",
            },
            _ => {
                return Err(Done::Refused(
                    "the deploy script reported a start it did not explain".into(),
                ))
            }
        },
        None => {
            return Err(Done::Refused(format!(
                "the deploy script stopped before starting the agent (exit status {}): {last_err}",
                status.map_or("none".into(), |s| s.to_string())
            )))
        }
    };
    if status != Some(0) {
        return Err(Done::Refused(format!(
            "the deploy script exited with status {status:?}: {last_err}"
        )));
    }
    Ok(Report {
        started,
        keys: value("keys").unwrap_or_else(|| "unknown".into()),
        version: value("version").unwrap_or_else(|| "agent (version unknown)".into()),
        port: value("port").and_then(|p| p.parse().ok()),
    })
}

/// What [`script`] needs for one host.
pub struct Params<'a> {
    /// Install under this directory instead of `/`.
    pub root: Option<&'a str>,
    /// `ADDR:PORT` for `--listen`.
    pub listen: &'a str,
    /// The key id of the enrolled line: a key file that holds it is kept.
    pub key_id: &'a str,
    /// The key file's contents (secret).
    pub key_file: &'a str,
    /// The agent binary, base64.
    pub agent_b64: &'a str,
    /// Write the key file even where it holds `key_id`.
    pub replace_keys: bool,
}

/// The script one host runs with `sh -s`. It is one `{ ...; }` group, so that the shell has
/// read all of it (here-documents included) before running any of it: nothing it starts can
/// swallow the rest of the script from stdin.
pub fn script(p: &Params) -> String {
    let q = crate::script::shell_quote;
    let unit = UNIT.replace(
        UNIT_EXEC_START,
        &format!(
            "ExecStart=/usr/local/bin/agent --key-file /etc/rexec/keys --listen {}",
            p.listen
        ),
    );
    let mut s = String::new();
    s.push_str("{\nset -u\nexec </dev/null\n");
    s.push_str(&format!(
        "root={}\nlisten={}\nkey_id={}\nreplace_keys={}\nscratch={}\n",
        q(p.root.unwrap_or("")),
        q(p.listen),
        q(p.key_id),
        u8::from(p.replace_keys),
        u8::from(p.root.is_some()),
    ));
    s.push_str(&format!(
        "need_kib={}\n",
        (p.agent_b64.len() / 4 * 3).div_ceil(1024) + 1
    ));
    s.push_str(SCRIPT_STEPS_BEFORE_BINARY);
    s.push_str("base64 -d > \"$new\" 2>\"$err\" <<'REXEC_AGENT_END' || fail \"cannot write $new: $(tail -n 1 \"$err\")\"\n");
    for chunk in p.agent_b64.as_bytes().chunks(76) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("REXEC_AGENT_END\n");
    s.push_str(SCRIPT_INSTALL_BINARY);
    s.push_str(
        "if [ \"$write_keys\" = 1 ]; then\n(umask 077; cat > \"$keys.new\") 2>\"$err\" <<'REXEC_KEYS_END' || fail \"cannot write $keys.new: $(tail -n 1 \"$err\")\"\n",
    );
    s.push_str(p.key_file);
    if !p.key_file.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("REXEC_KEYS_END\n");
    s.push_str(SCRIPT_INSTALL_KEYS);
    s.push_str("fi\n");
    s.push_str(
        "if [ \"$scratch\" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then\n",
    );
    s.push_str("cat > \"$new_unit\" 2>\"$err\" <<'REXEC_UNIT_END' || fail \"cannot write $new_unit: $(tail -n 1 \"$err\")\"\n");
    s.push_str(&unit);
    if !unit.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("REXEC_UNIT_END\n");
    s.push_str(SCRIPT_START);
    s.push_str("}\n");
    s
}

/// Directories, then where the binary goes (`$new`) and a file for errors.
const SCRIPT_STEPS_BEFORE_BINARY: &str = r#"say() { printf 'rexec-deploy: %s\n' "$*"; }
fail() { printf 'rexec-deploy: error %s\n' "$*"; exit 1; }
bin="$root/usr/local/bin/agent"
etc="$root/etc/rexec"
keys="$etc/keys"
state="$root/var/lib/rexec"
new="$bin.rexec-deploy"
new_unit="$root/etc/systemd/system/rexec-agent.service.rexec-deploy"
err=$(mktemp 2>/dev/null || echo "/tmp/rexec-deploy.$$")
trap 'rm -f "$err" "$new"' EXIT
for dir in "$root/usr/local/bin" "$state"; do
  mkdir -p "$dir" 2>"$err" || fail "cannot create $dir: $(tail -n 1 "$err")"
done
# A full disk would otherwise show as a bare "write error" from base64.
free_kib=$(df -Pk "$root/usr/local/bin" 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -n "$free_kib" ] && [ "$free_kib" -lt "$need_kib" ]; then
  fail "no space left for the agent: $free_kib KiB free in $root/usr/local/bin, it needs $need_kib KiB"
fi
"#;

/// Checks that the uploaded binary runs here, then moves it into place (an upgrade in place:
/// a running agent keeps its old, unlinked file until it restarts).
const SCRIPT_INSTALL_BINARY: &str = r#"chmod 0755 "$new"
version=$("$new" --version 2>"$err") || fail "the copied agent does not run on this host (another architecture or libc?): $(tail -n 1 "$err")"
mv -f "$new" "$bin" 2>"$err" || fail "cannot install $bin: $(tail -n 1 "$err")"
say "version $version"
mkdir -p "$etc" 2>"$err" || fail "cannot create $etc: $(tail -n 1 "$err")"
chmod 0700 "$etc"
write_keys=1
if [ -s "$keys" ] && [ "$replace_keys" = 0 ] && grep -q "^$key_id[[:space:]]" "$keys"; then
  write_keys=0
  say "keys kept ($keys holds key $key_id; --replace-keys replaces it)"
fi
"#;

/// Moves the new key file into place.
const SCRIPT_INSTALL_KEYS: &str = r#"had=0; [ -e "$keys" ] && had=1
mv -f "$keys.new" "$keys" 2>"$err" || fail "cannot install $keys: $(tail -n 1 "$err")"
if [ "$had" = 1 ]; then say "keys replaced"; else say "keys written"; fi
"#;

/// Under systemd (the unit is in `$new_unit`): install, enable, restart. Otherwise: stop the
/// agent a previous deploy started, start the new one in the background, wait for its
/// `listening` line.
const SCRIPT_START: &str = r#"mv -f "$new_unit" /etc/systemd/system/rexec-agent.service
systemctl daemon-reload 2>"$err" || fail "systemctl daemon-reload failed: $(tail -n 1 "$err")"
systemctl enable rexec-agent.service >/dev/null 2>"$err" || fail "systemctl enable rexec-agent failed: $(tail -n 1 "$err")"
systemctl restart rexec-agent.service 2>"$err" || fail "systemctl restart rexec-agent failed: $(tail -n 1 "$err"); see journalctl -u rexec-agent"
say "started systemd"
else
how=background
if [ "$scratch" = 0 ]; then how=no-systemd; fi
pidfile="$state/agent.pid"
log="$state/agent.log"
if [ -s "$pidfile" ]; then
  old=$(cat "$pidfile")
  case $(readlink "/proc/$old/exe" 2>/dev/null) in
    "$bin"*)
      kill -TERM "$old" 2>/dev/null
      n=0
      while kill -0 "$old" 2>/dev/null && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
      kill -0 "$old" 2>/dev/null && fail "the running agent (pid $old) did not stop within 10 s of SIGTERM"
      ;;
  esac
fi
: > "$log"
"$bin" --key-file "$keys" --listen "$listen" >>"$log" 2>&1 </dev/null &
pid=$!
echo "$pid" > "$pidfile"
n=0
until grep -q listening "$log"; do
  kill -0 "$pid" 2>/dev/null || fail "the agent exited at start: $(tail -n 1 "$log")"
  [ "$n" -lt 200 ] || fail "the agent did not say it was listening within 20 s (log: $log)"
  sleep 0.1; n=$((n + 1))
done
port=$(sed -n 's/.*listening on .*:\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
say "port $port"
say "started $how $pid"
fi
"#;

/// The agent binary, read and base64-encoded for [`Deploy::agent_b64`].
pub fn encode_binary(bytes: &[u8]) -> Arc<str> {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(key_file: &str) -> Params<'_> {
        Params {
            root: Some("/tmp/it's here"),
            listen: "127.0.0.1:0",
            key_id: "ops",
            key_file,
            agent_b64: "QUJD",
            replace_keys: false,
        }
    }

    #[test]
    fn the_secret_is_in_the_script_body_only_and_values_are_quoted() {
        let secret = "ops 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        let text = script(&params(secret));
        assert!(text.starts_with("{\n") && text.ends_with("}\n"), "{text}");
        assert!(text.contains("root='/tmp/it'\\''s here'\n"), "{text}");
        // The secret sits between its here-document markers, nowhere else.
        let (before, after) = text.split_once(secret).expect("key file in the script");
        assert!(before.ends_with(
            "<<'REXEC_KEYS_END' || fail \"cannot write $keys.new: $(tail -n 1 \"$err\")\"\n"
        ));
        assert!(after.starts_with("REXEC_KEYS_END\n"));
        assert_eq!(text.matches(secret.trim()).count(), 1);
        // The unit the script would install listens where asked.
        assert!(
            UNIT.contains(UNIT_EXEC_START),
            "agent.service changed its ExecStart"
        );
        assert!(text.contains("--listen 127.0.0.1:0\n"));
        assert!(!text.contains(UNIT_EXEC_START));
    }

    #[test]
    fn script_is_valid_sh() {
        let text = script(&params("ops 00\n"));
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &text])
            .output()
            .expect("run sh -n");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn reports_become_one_result_per_host() {
        let ok = "rexec-deploy: version agent 0.1.0\nrexec-deploy: keys written\n\
                  rexec-deploy: port 41234\nrexec-deploy: started background 77\n";
        assert_eq!(
            parse_report(Some(0), ok, ""),
            Ok(Report {
                started: Started::Background {
                    pid: 77,
                    no_systemd: false
                },
                keys: "written".into(),
                version: "agent 0.1.0".into(),
                port: Some(41234),
            })
        );
        let refused = parse_report(
            Some(255),
            "",
            "ssh: connect to host h port 22: Connection refused\n",
        );
        assert_eq!(
            refused,
            Err(Done::Unreachable(Failure::Connect(
                "ssh failed: ssh: connect to host h port 22: Connection refused".into()
            )))
        );
        let full = parse_report(
            Some(1),
            "rexec-deploy: error cannot write /x/agent: No space left on device\n",
            "",
        );
        assert_eq!(
            full,
            Err(Done::Refused(
                "cannot write /x/agent: No space left on device".into()
            ))
        );
        let sudo = parse_report(Some(1), "", "sudo: a password is required\n");
        assert!(
            matches!(&sudo, Err(Done::Refused(m)) if m.starts_with("no sudo:")),
            "{sudo:?}"
        );
    }
}
