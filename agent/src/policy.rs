//! The one decision point for per-key policy: every authenticated request goes through
//! [`authorize`] before anything is started, and comes out either as the request to carry out
//! (forced command, capped timeout, the user to run as) or as a [`Refusal`] naming the rule.
//!
//! Pure: no I/O, no user lookups (the caller resolves `user=` afterwards), so every rule is
//! unit-tested here.

use std::net::IpAddr;
use std::time::Duration;

use rexec_shared::message::{ExecRequest, PtyRequest, Request};
use rexec_shared::policy::Policy;

/// The variable that carries the client's command to a forced one (as ssh's
/// `SSH_ORIGINAL_COMMAND` does).
pub const ORIGINAL_COMMAND_VAR: &str = "REXEC_ORIGINAL_COMMAND";

/// Who is asking: what the handshake established about the client.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The key id it proved it holds.
    pub key_id: &'a str,
    /// Its address.
    pub peer: IpAddr,
}

/// A request the policy lets through, as it is to be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The effective request.
    pub request: Request,
    /// The user to run as (`user=`); the agent's own user when `None`.
    pub user: Option<String>,
}

/// A request the policy refuses: nothing is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The option that refused it, as written in the key file (`from`, `no-stdin`, ...).
    pub rule: &'static str,
    /// What was refused and what to do, for the client and the audit log.
    pub reason: String,
}

impl Refusal {
    /// A `user=` that cannot be used now (the user was removed since the key file was read).
    pub fn user(reason: String) -> Self {
        Self {
            rule: "user",
            reason,
        }
    }

    /// The text sent to the client.
    pub fn message(&self) -> String {
        format!(
            "refused by the key's policy ({}): {}; nothing was run",
            self.rule, self.reason
        )
    }
}

/// Decides what `caller` may do with `request` under `policy`.
pub fn authorize(caller: Caller<'_>, policy: &Policy, request: Request) -> Result<Grant, Refusal> {
    let Caller { key_id, peer } = caller;
    // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d; it is named as IPv4.
    let peer = peer.to_canonical();
    if !policy.admits(peer) {
        let from = policy
            .from
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(";");
        return Err(Refusal {
            rule: "from",
            reason: format!("key {key_id} is accepted only from {from}, not from {peer}"),
        });
    }
    let request = match request {
        Request::Ping => Request::Ping,
        Request::Exec(req) => Request::Exec(exec(key_id, policy, req)?),
        Request::Push(_) | Request::Pull(_) if policy.command.is_some() => {
            return Err(Refusal {
                rule: "command",
                reason: format!(
                    "key {key_id} runs only its forced command; it may not push or pull files"
                ),
            })
        }
        transfer @ (Request::Push(_) | Request::Pull(_)) => transfer,
        Request::Pty(_) if policy.no_pty => {
            return Err(Refusal {
                rule: "no-pty",
                reason: format!(
                    "key {key_id} may not open a terminal (no-pty); run ctl exec without -t"
                ),
            })
        }
        Request::Pty(req) => Request::Pty(pty(key_id, policy, req)?),
    };
    Ok(Grant {
        request,
        user: policy.user.clone(),
    })
}

fn exec(key_id: &str, policy: &Policy, mut req: ExecRequest) -> Result<ExecRequest, Refusal> {
    if policy.no_stdin && req.stdin {
        return Err(Refusal {
            rule: "no-stdin",
            reason: format!(
                "key {key_id} may not send stdin to its commands; run ctl exec with -n (and without --stdin or --script)"
            ),
        });
    }
    if let Some(forced) = &policy.command {
        // The forced command is what the key holder agreed to run; variables and a directory
        // from the client (PATH, LD_PRELOAD, a relative path's base) could make it run
        // something else.
        if !req.env.is_empty() {
            return Err(Refusal {
                rule: "command",
                reason: format!(
                    "key {key_id} runs only its forced command, which takes no environment variables from the client (-e)"
                ),
            });
        }
        if req.cwd.is_some() {
            return Err(Refusal {
                rule: "command",
                reason: format!(
                    "key {key_id} runs only its forced command, which takes no working directory from the client (--cwd)"
                ),
            });
        }
        let original = std::mem::replace(&mut req.command, forced.clone().into_bytes());
        req.env
            .push((ORIGINAL_COMMAND_VAR.as_bytes().to_vec(), original));
    }
    if let Some(max) = policy.max_timeout {
        req.timeout_ms = Some(capped(req.timeout_ms, max));
    }
    Ok(req)
}

/// The same rules for a terminal session: everything typed is stdin, and a forced command
/// replaces the command (or the login shell) asked for.
fn pty(key_id: &str, policy: &Policy, req: PtyRequest) -> Result<PtyRequest, Refusal> {
    let as_exec = ExecRequest {
        command: req.command.clone().unwrap_or_default(),
        env: req.env.clone(),
        cwd: req.cwd.clone(),
        timeout_ms: req.timeout_ms,
        stdin: true,
        ..Default::default()
    };
    let checked = exec(key_id, policy, as_exec)?;
    Ok(PtyRequest {
        command: if policy.command.is_some() {
            Some(checked.command)
        } else {
            req.command
        },
        env: checked.env,
        cwd: checked.cwd,
        timeout_ms: checked.timeout_ms,
        ..req
    })
}

/// The client's timeout in milliseconds, no longer than `max` (and `max` without one).
fn capped(asked_ms: Option<u64>, max: Duration) -> u64 {
    // At least 1 ms: a zero timeout means none on the wire.
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    asked_ms.map_or(max_ms, |ms| ms.min(max_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(text).unwrap()
    }

    fn caller(peer: &str) -> Caller<'static> {
        Caller {
            key_id: "ops",
            peer: peer.parse().unwrap(),
        }
    }

    fn exec_req(command: &str) -> ExecRequest {
        ExecRequest {
            command: command.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn granted_exec(grant: Grant) -> ExecRequest {
        match grant.request {
            Request::Exec(req) => req,
            other => panic!("not an exec: {other:?}"),
        }
    }

    #[test]
    fn no_options_change_nothing() {
        let req = ExecRequest {
            timeout_ms: Some(5),
            stdin: true,
            env: vec![(b"A".to_vec(), b"1".to_vec())],
            cwd: Some(b"/tmp".to_vec()),
            ..exec_req("id")
        };
        let grant =
            authorize(caller("192.0.2.1"), &policy(""), Request::Exec(req.clone())).unwrap();
        assert_eq!(grant.user, None);
        assert_eq!(granted_exec(grant), req);
    }

    #[test]
    fn from_refuses_other_addresses_for_every_request() {
        let p = policy("from=10.0.0.0/8;::1");
        for request in [Request::Ping, Request::Exec(exec_req("true"))] {
            let refusal = authorize(caller("127.0.0.1"), &p, request.clone()).unwrap_err();
            assert_eq!(refusal.rule, "from");
            assert!(
                refusal.message().contains(
                    "key ops is accepted only from 10.0.0.0/8;::1/128, not from 127.0.0.1"
                ),
                "{}",
                refusal.message()
            );
            assert!(authorize(caller("10.1.2.3"), &p, request.clone()).is_ok());
            assert!(authorize(caller("::1"), &p, request).is_ok());
        }
        let p = policy("from=127.0.0.0/8");
        assert!(authorize(caller("::ffff:127.0.0.1"), &p, Request::Ping).is_ok());
        let refusal = authorize(
            caller("::ffff:127.0.0.1"),
            &policy("from=::1"),
            Request::Ping,
        );
        assert!(
            refusal.unwrap_err().reason.ends_with("not from 127.0.0.1"),
            "a mapped peer is named as IPv4"
        );
    }

    #[test]
    fn a_forced_command_replaces_the_clients_and_passes_it_on() {
        let p = policy(r#"command="echo forced""#);
        let grant =
            authorize(caller("192.0.2.1"), &p, Request::Exec(exec_req("rm -rf /"))).unwrap();
        let req = granted_exec(grant);
        assert_eq!(req.command, b"echo forced");
        assert_eq!(
            req.env,
            [(b"REXEC_ORIGINAL_COMMAND".to_vec(), b"rm -rf /".to_vec())]
        );
        for bad in [
            ExecRequest {
                env: vec![(b"PATH".to_vec(), b"/tmp".to_vec())],
                ..exec_req("x")
            },
            ExecRequest {
                cwd: Some(b"/tmp".to_vec()),
                ..exec_req("x")
            },
        ] {
            let refusal = authorize(caller("192.0.2.1"), &p, Request::Exec(bad)).unwrap_err();
            assert_eq!(refusal.rule, "command");
        }
    }

    #[test]
    fn a_forced_command_allows_no_file_transfers() {
        let p = policy("command=uptime");
        for request in [
            Request::Push(Default::default()),
            Request::Pull(Default::default()),
        ] {
            let refusal = authorize(caller("192.0.2.1"), &p, request.clone()).unwrap_err();
            assert_eq!(refusal.rule, "command");
            let grant = authorize(caller("192.0.2.1"), &policy("no-pty"), request.clone());
            assert_eq!(grant.unwrap().request, request);
        }
    }

    #[test]
    fn no_stdin_refuses_a_request_that_sends_stdin() {
        let p = policy("no-stdin");
        let with_stdin = ExecRequest {
            stdin: true,
            ..exec_req("cat")
        };
        let refusal = authorize(caller("192.0.2.1"), &p, Request::Exec(with_stdin)).unwrap_err();
        assert_eq!(refusal.rule, "no-stdin");
        assert!(refusal.message().contains("-n"), "{}", refusal.message());
        assert!(authorize(caller("192.0.2.1"), &p, Request::Exec(exec_req("cat"))).is_ok());
    }

    #[test]
    fn max_timeout_caps_a_longer_or_absent_timeout() {
        let p = policy("max-timeout=2.5");
        for (asked, effective) in [(None, 2500), (Some(10_000), 2500), (Some(700), 700)] {
            let req = ExecRequest {
                timeout_ms: asked,
                ..exec_req("sleep 9")
            };
            let grant = authorize(caller("192.0.2.1"), &p, Request::Exec(req)).unwrap();
            assert_eq!(granted_exec(grant).timeout_ms, Some(effective), "{asked:?}");
        }
        assert_eq!(capped(None, Duration::from_micros(10)), 1);
    }

    #[test]
    fn user_is_handed_on() {
        let grant = authorize(
            caller("192.0.2.1"),
            &policy("user=nobody"),
            Request::Exec(exec_req("id")),
        )
        .unwrap();
        assert_eq!(grant.user.as_deref(), Some("nobody"));
    }

    fn pty_req(command: Option<&str>) -> PtyRequest {
        PtyRequest {
            command: command.map(|c| c.as_bytes().to_vec()),
            term: b"xterm".to_vec(),
            ..Default::default()
        }
    }

    fn granted_pty(grant: Grant) -> PtyRequest {
        match grant.request {
            Request::Pty(req) => req,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn terminal_sessions_follow_the_same_rules() {
        let who = caller("192.0.2.1");
        let refusal = authorize(who, &policy("no-pty"), Request::Pty(pty_req(None))).unwrap_err();
        assert_eq!(refusal.rule, "no-pty");
        assert!(refusal.message().contains("-t"), "{}", refusal.message());
        // Everything typed is stdin.
        let refusal =
            authorize(who, &policy("no-stdin"), Request::Pty(pty_req(Some("top")))).unwrap_err();
        assert_eq!(refusal.rule, "no-stdin");
        // A forced command replaces the login shell or the command asked for.
        for asked in [None, Some("vi /etc/passwd")] {
            let grant = authorize(
                who,
                &policy("command=\"top -b\""),
                Request::Pty(pty_req(asked)),
            )
            .unwrap();
            let req = granted_pty(grant);
            assert_eq!(req.command.as_deref(), Some(&b"top -b"[..]));
            let original = asked.unwrap_or_default().as_bytes().to_vec();
            assert_eq!(
                req.env,
                vec![(ORIGINAL_COMMAND_VAR.as_bytes().to_vec(), original)]
            );
            assert_eq!(req.term, b"xterm");
        }
        let mut with_env = pty_req(None);
        with_env.env.push((b"LD_PRELOAD".to_vec(), b"x".to_vec()));
        assert!(authorize(who, &policy("command=top"), Request::Pty(with_env)).is_err());
        let grant = authorize(who, &policy("max-timeout=3"), Request::Pty(pty_req(None))).unwrap();
        let req = granted_pty(grant);
        assert_eq!(req.timeout_ms, Some(3000));
        assert_eq!(req.command, None);
    }
}
