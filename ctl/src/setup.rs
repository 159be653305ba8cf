//! Settings for one run, each from the first place that gives it: the command line, the
//! environment (`CTL_PORT`, `CTL_KEY_FILE`; set but empty counts as unset), ctl's config
//! file, the built-in default. Also the process set-up a fleet run needs: the file
//! descriptor limit and `-v` logging.

use std::path::PathBuf;
use std::time::Duration;

use rexec_shared::{liveness, DEFAULT_PORT};

use crate::cli::{KeyArgs, TargetArgs};
use crate::config::Config;

/// Default `-P`.
pub const DEFAULT_PARALLEL: u32 = 64;
/// Default `--connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors ctl needs besides one socket per running target: stdio, the runtime,
/// the resolver, a key and a hosts file.
const FD_RESERVE: u64 = 64;

/// What a run uses.
#[derive(Debug)]
pub struct Settings {
    /// Port for targets that name none.
    pub port: u16,
    /// Most targets at once.
    pub parallel: u32,
    /// Bound on connecting and authenticating.
    pub connect_timeout: Duration,
    /// The key file, if one was named anywhere (else the default path).
    pub key_file: Option<PathBuf>,
    /// Groups and agent names.
    pub config: Config,
}

/// `name`'s value, or `None` when unset or empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The key file: `--key-file`, else `CTL_KEY_FILE`, else the config's `key_file` (`None`:
/// the default path).
pub fn key_file(key: &KeyArgs, config: &Config) -> Option<PathBuf> {
    key.key_file
        .clone()
        .or_else(|| env("CTL_KEY_FILE").map(PathBuf::from))
        .or_else(|| config.key_file.clone())
}

/// Resolves the settings, or says which one is wrong and where it came from.
pub fn resolve(targets: &TargetArgs, key: &KeyArgs) -> Result<Settings, String> {
    let config = Config::load().map_err(|e| format!("{e:#}"))?;
    let port = match (targets.port, env("CTL_PORT")) {
        (Some(port), _) => port,
        (None, Some(text)) => match text.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("CTL_PORT={text:?} is not a port (1-65535)")),
        },
        (None, None) => config.port.unwrap_or(DEFAULT_PORT),
    };
    let key_file = key_file(key, &config);
    let alive_timeout = targets
        .alive_timeout
        .or(config.alive_timeout)
        .map_or(Some(liveness::DEFAULT_TIMEOUT), |t| t.0);
    // Every connection of the run takes it from there.
    crate::remote::set_alive_timeout(alive_timeout);
    Ok(Settings {
        port,
        parallel: targets
            .parallel
            .or(config.parallel)
            .unwrap_or(DEFAULT_PARALLEL),
        connect_timeout: targets
            .connect_timeout
            .or(config.connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        key_file,
        config,
    })
}

/// Raises the soft limit on open files to the hard one, and checks that `per_target`
/// descriptors for each of `parallel` targets fit.
pub fn fit_fd_limit(parallel: u32, per_target: u64) -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Ok(());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let need = u64::from(parallel) * per_target + FD_RESERVE;
    if need > limit.rlim_cur {
        let most = limit.rlim_cur.saturating_sub(FD_RESERVE) / per_target.max(1);
        return Err(format!(
            "-P {parallel} needs about {need} open files, but this process may open only {} \
             (hard limit {}): use -P {most} or less, or raise the limit (ulimit -n)",
            limit.rlim_cur, limit.rlim_max
        ));
    }
    Ok(())
}

/// With `-v` or `RUST_LOG`, ctl's connect, handshake and timing steps go to stderr.
pub fn init_logging(verbose: bool) {
    let filter = match (verbose, env("RUST_LOG")) {
        (true, _) => "ctl=debug".to_owned(),
        (false, Some(filter)) => filter,
        (false, None) => return,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
