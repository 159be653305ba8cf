//! Running as another user (`user=` in the key file): look the user up, and drop to its
//! uid, gid and groups in a command's process just before it executes.
//!
//! Lookups happen in the agent, before the fork: the child runs only async-signal-safe calls
//! on data prepared here. The drop is the classic order, each step checked, then verified:
//! setgroups (while still root), setgid (while still root), setuid (last: it gives up the
//! right to do the other two), then the real and effective ids are read back and a return to
//! root must fail.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rexec_shared::keyfile::AgentKeys;

/// Most supplementary groups taken for one user (Linux's NGROUPS_MAX is 65536).
const MAX_GROUPS: usize = 65_536;
/// Largest buffer offered to getpwnam_r before giving up on an entry.
const MAX_PASSWD_BUF: usize = 1 << 20;

/// Everything needed to run a command as one user, read from the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name.
    pub name: String,
    /// Its uid.
    pub uid: libc::uid_t,
    /// Its primary gid.
    pub gid: libc::gid_t,
    /// All its groups, the primary one included (getgrouplist).
    pub groups: Vec<libc::gid_t>,
    /// Its home directory.
    pub home: PathBuf,
    /// Its login shell.
    pub shell: PathBuf,
}

impl Credentials {
    /// Looks `name` up in the user database (files, NSS); the error says what went wrong.
    pub fn lookup(name: &str) -> Result<Self, String> {
        let c_name = CString::new(name).map_err(|_| format!("user {name:?}: holds a NUL byte"))?;
        let (uid, gid, home, shell) = getpwnam(&c_name)
            .map_err(|e| format!("cannot look up user {name}: {e}"))?
            .ok_or_else(|| format!("no user named {name} on this host"))?;
        let groups = grouplist(&c_name, gid);
        Ok(Self {
            name: name.to_owned(),
            uid,
            gid,
            groups,
            home,
            shell,
        })
    }

    /// The variables a login sets for this user: HOME, USER, LOGNAME, SHELL.
    pub fn env(&self) -> [(&'static str, OsString); 4] {
        [
            ("HOME", self.home.clone().into_os_string()),
            ("USER", self.name.clone().into()),
            ("LOGNAME", self.name.clone().into()),
            ("SHELL", self.shell.clone().into_os_string()),
        ]
    }

    /// Takes on this user's ids and groups on the calling thread only, for a file transfer's
    /// thread of its own: raw system calls, since glibc's wrappers change every thread of the
    /// process. There is no way back, so the thread must end with its transfer. (The working
    /// directory is shared by all threads and stays as it is.)
    pub fn enter_on_this_thread(&self) -> Result<(), String> {
        let fail = |step: &str| {
            format!(
                "cannot take on the rights of user {} ({step}): {}",
                self.name,
                io::Error::last_os_error()
            )
        };
        // SAFETY: plain system calls on owned, initialised data; they change only the calling
        // thread's credentials.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()) != 0 {
                return Err(fail("setgroups"));
            }
            if libc::syscall(libc::SYS_setresgid, self.gid, self.gid, self.gid) != 0 {
                return Err(fail("setresgid"));
            }
            if libc::syscall(libc::SYS_setresuid, self.uid, self.uid, self.uid) != 0 {
                return Err(fail("setresuid"));
            }
            // getuid and friends are plain system calls too, so they read this thread's ids.
            let dropped = libc::getuid() == self.uid
                && libc::geteuid() == self.uid
                && libc::getgid() == self.gid
                && libc::getegid() == self.gid;
            if !dropped || (self.uid != 0 && libc::syscall(libc::SYS_setresuid, 0, 0, 0) == 0) {
                return Err(format!(
                    "cannot take on the rights of user {}: the ids did not change as asked",
                    self.name
                ));
            }
        }
        Ok(())
    }

    /// `path` as this user means it: a relative path is taken from the home directory, as the
    /// user's commands start there.
    pub fn resolve(&self, path: &[u8]) -> Vec<u8> {
        let path = Path::new(OsStr::from_bytes(path));
        self.home.join(path).into_os_string().into_vec()
    }

    /// Prepares the step that runs in the child: drop to this user, then change to `cwd`, or
    /// to the home directory (`/` when the home cannot be entered, as login does).
    pub fn switch(&self, cwd: Option<&Path>) -> Result<Switch, String> {
        let path = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| format!("directory {} holds a NUL byte", p.display()))
        };
        let (dir, required) = match cwd {
            Some(dir) => (path(dir)?, true),
            None => (path(&self.home)?, false),
        };
        Ok(Switch {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            dir,
            dir_required: required,
        })
    }
}

// The raw credential calls below are the 32-bit-id ones only on 64-bit targets (on i386 and arm
// the plain numbers take 16-bit ids, and a group list would be misread).
#[cfg(not(target_pointer_width = "64"))]
compile_error!("the agent's privilege drop needs a 64-bit target");

/// The privilege drop, prepared in the agent and run in the child before exec (see
/// [`crate::spawn`]).
#[derive(Debug, Clone)]
pub struct Switch {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    dir: CString,
    dir_required: bool,
}

impl Switch {
    /// Drops to the user and changes directory. Only for the child between clone and exec: it
    /// allocates nothing and makes only plain system calls. An error fails the spawn, so
    /// nothing runs with the agent's rights by mistake.
    pub fn run_in_child(&self) -> io::Result<()> {
        // The raw system calls, not glibc's wrappers: those bring every thread of the process
        // to the same credentials (the setxid broadcast, through glibc's thread list and its
        // locks), shared state that a child in the agent's memory (crate::spawn) must not use.
        //
        // The directory is entered with the user's file-system rights (fsuid) while the real
        // and saved uid are still root's: a chdir can be held up (a FUSE mount of the user's),
        // and all that time the child shares the agent's memory, so the user must not be able
        // to signal or trace it. Only then the uid changes, and exec follows at once.
        let raw = |call: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long| {
            // SAFETY: a credential system call with integer arguments, or setgroups with the
            // list below, which outlives the call.
            unsafe { libc::syscall(call, a, b, c) }
        };
        let check = |rc: libc::c_long| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        let (uid, gid) = (libc::c_long::from(self.uid), libc::c_long::from(self.gid));
        check(raw(
            libc::SYS_setgroups,
            self.groups.len() as libc::c_long,
            self.groups.as_ptr() as libc::c_long,
            0,
        ))?;
        check(raw(libc::SYS_setresgid, gid, gid, gid))?;
        raw(libc::SYS_setfsuid, uid, 0, 0);
        // setfsuid reports no error: asking again (with an id it refuses) returns the one in force.
        if raw(libc::SYS_setfsuid, -1, 0, 0) != uid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        // SAFETY: chdir with NUL-terminated paths that outlive the call.
        unsafe {
            if libc::chdir(self.dir.as_ptr()) != 0 {
                if self.dir_required {
                    return Err(io::Error::last_os_error());
                }
                check(libc::c_long::from(libc::chdir(c"/".as_ptr())))?;
            }
        }
        check(raw(libc::SYS_setresuid, uid, uid, uid))?;
        // SAFETY: plain queries of this process's ids.
        let dropped = unsafe {
            libc::getuid() == self.uid
                && libc::geteuid() == self.uid
                && libc::getgid() == self.gid
                && libc::getegid() == self.gid
        };
        // Were the saved uid left at 0, getting root back would succeed.
        if !dropped || (self.uid != 0 && raw(libc::SYS_setresuid, 0, 0, 0) == 0) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

/// Checks every `user=` of a key file that is about to be put in force: the agent must run as
/// root, and each user must exist. The error names the file and the line.
pub fn check_key_users(keys: &AgentKeys, path: &Path) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    // In file order, so the first bad line is the one named.
    let mut entries: Vec<_> = keys.iter().collect();
    entries.sort_by_key(|entry| entry.line);
    for entry in entries {
        let Some(name) = &entry.policy.user else {
            continue;
        };
        let at = format!("key file {}, line {}", path.display(), entry.line);
        if euid != 0 {
            return Err(format!(
                "{at}: user={name} needs an agent running as root (this one runs as uid {euid})"
            ));
        }
        Credentials::lookup(name).map_err(|e| format!("{at}: user={name}: {e}"))?;
    }
    Ok(())
}

type PasswdEntry = (libc::uid_t, libc::gid_t, PathBuf, PathBuf);

fn getpwnam(name: &CStr) -> io::Result<Option<PasswdEntry>> {
    let mut buf_len = 4096;
    loop {
        let mut buf = vec![0 as libc::c_char; buf_len];
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids) for an output.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and buf's length is passed with it.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf_len < MAX_PASSWD_BUF {
            buf_len *= 2;
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if found.is_null() {
            return Ok(None);
        }
        // SAFETY: on success the strings point into buf (alive here) and are NUL-terminated,
        // or are null, which cstr_path handles.
        let (home, shell) = unsafe { (cstr_path(pwd.pw_dir), cstr_path(pwd.pw_shell)) };
        // An empty shell field means /bin/sh, as for login(1).
        let shell = if shell.as_os_str().is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            shell
        };
        return Ok(Some((pwd.pw_uid, pwd.pw_gid, home, shell)));
    }
}

/// # Safety
/// `ptr` is null or points to a NUL-terminated string.
unsafe fn cstr_path(ptr: *const libc::c_char) -> PathBuf {
    if ptr.is_null() {
        return PathBuf::new();
    }
    // SAFETY: as the caller promises.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// The user's groups, `gid` among them (getgrouplist puts it first).
fn grouplist(name: &CStr, gid: libc::gid_t) -> Vec<libc::gid_t> {
    let mut len: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; len as usize];
        let mut count = len;
        // SAFETY: groups holds `count` entries; getgrouplist writes at most that many and sets
        // count to how many there are.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        // -1: too small; count now holds the size needed (glibc), else double.
        let next = if count > len {
            count
        } else {
            len.saturating_mul(2)
        };
        if next as usize > MAX_GROUPS {
            // Cannot happen on Linux; the primary group alone still drops every other one.
            return vec![gid];
        }
        len = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_nobody_are_found_and_a_stranger_is_not() {
        let root = Credentials::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert_eq!(root.env()[0].0, "HOME");
        if let Ok(nobody) = Credentials::lookup("nobody") {
            assert_eq!(nobody.uid, 65534);
            assert!(nobody.groups.contains(&nobody.gid));
        }
        let err = Credentials::lookup("rexec-no-such-user-x").unwrap_err();
        assert!(err.contains("no user named rexec-no-such-user-x"), "{err}");
    }

    #[test]
    fn the_drop_takes_in_a_child_and_cannot_be_undone() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: dropping privileges needs root");
            return;
        }
        let Ok(nobody) = Credentials::lookup("nobody") else {
            eprintln!("skipped: this host has no user nobody");
            return;
        };
        let switch = nobody.switch(Some(Path::new("/"))).unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg("id -u; id -g; id -G; pwd");
        // SAFETY: the step only makes async-signal-safe calls on prepared data.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || switch.run_in_child());
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "65534", "{text}");
        assert_eq!(lines[1], nobody.gid.to_string(), "{text}");
        assert!(
            !lines[2].split(' ').any(|g| g == "0"),
            "kept root's group: {text}"
        );
        assert_eq!(lines[3], "/");

        // A directory the user may not enter is an error when asked for, `/` when it is home.
        let missing = nobody
            .switch(Some(Path::new("/nonexistent-rexec-dir")))
            .unwrap();
        let mut cmd = std::process::Command::new("true");
        // SAFETY: as above.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || missing.run_in_child());
        }
        let err = cmd.spawn().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    }

    #[test]
    fn a_thread_takes_on_the_user_alone() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: dropping privileges needs root");
            return;
        }
        let Ok(nobody) = Credentials::lookup("nobody") else {
            eprintln!("skipped: this host has no user nobody");
            return;
        };
        let ids = std::thread::spawn(move || {
            nobody.enter_on_this_thread().unwrap();
            // SAFETY: no preconditions.
            let ids = unsafe { (libc::getuid(), libc::geteuid()) };
            let readable = std::fs::File::open("/etc/shadow").is_ok();
            (ids, readable)
        })
        .join()
        .unwrap();
        assert_eq!(ids, ((65534, 65534), false));
        // SAFETY: no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the other threads stay root");
    }

    #[test]
    fn relative_paths_start_at_home() {
        let user = Credentials {
            name: "u".into(),
            uid: 1,
            gid: 1,
            groups: vec![1],
            home: "/home/u".into(),
            shell: "/bin/sh".into(),
        };
        assert_eq!(user.resolve(b"notes/a"), b"/home/u/notes/a");
        assert_eq!(user.resolve(b"/etc/hosts"), b"/etc/hosts");
    }
}
