//! Starting a workload inside a sandbox: into the cgroup before exec, then
//! without privileges.

use std::{
    ffi::OsString,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::Command,
};

use anyhow::{Context, Result, bail};
use nix::unistd::{Gid, Uid, User};

/// Environment variables that point TLS clients at the trust bundle.
pub const CA_ENV_VARS: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];

/// Who a workload runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
}

/// Resolves `--user` (a name or a numeric uid). Root is refused: a root
/// workload can leave its cgroup or set the agent's socket mark.
pub fn resolve_user(spec: &str) -> Result<Workload> {
    let user = if let Ok(uid) = spec.parse::<u32>() {
        User::from_uid(Uid::from_raw(uid))?
            .map(|u| (u.uid.as_raw(), u.gid.as_raw(), u.name))
            .or(Some((uid, uid, spec.to_string())))
    } else {
        User::from_name(spec)?.map(|u| (u.uid.as_raw(), u.gid.as_raw(), u.name))
    };
    let Some((uid, gid, name)) = user else {
        bail!("--user `{spec}`: no such user on this host; give an existing user name or a uid");
    };
    if uid == 0 {
        bail!(
            "--user `{spec}` is root: a root workload can leave its sandbox cgroup or forge the \
             agent's socket mark. Run it as an unprivileged user (the default is `nobody`)"
        );
    }
    Ok(Workload { uid, gid, name })
}

/// The environment changes `portcullis run` makes.
pub fn sandbox_env(sandbox: &str, trust_bundle: &Path) -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = CA_ENV_VARS
        .iter()
        .map(|k| (k.to_string(), trust_bundle.as_os_str().to_owned()))
        .collect();
    env.push(("PORTCULLIS_SANDBOX".into(), sandbox.into()));
    env
}

/// Builds the child command. In the child, before exec: join the cgroup
/// (so no socket is ever created outside it), drop supplementary groups,
/// gid and uid, clear the capability bounding set, set no_new_privs and
/// mark every descriptor but stdio close-on-exec.
pub fn command(
    cgroup_dir: &Path,
    workload: &Workload,
    env: &[(String, OsString)],
    argv: &[String],
) -> Result<Command> {
    let (program, args) = argv.split_first().context("no command given after `--`")?;
    let procs = cgroup_dir.join("cgroup.procs");
    let procs_file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| {
            format!(
                "opening {}: `portcullis run` must run as root (it moves the child into the \
                 sandbox cgroup, then drops privileges)",
                procs.display()
            )
        })?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (uid, gid) = (Uid::from_raw(workload.uid), Gid::from_raw(workload.gid));
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on values prepared beforehand.
    unsafe {
        cmd.pre_exec(move || {
            let fd = procs_file.as_raw_fd();
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            nix::unistd::setgroups(&[gid])?;
            nix::unistd::setgid(gid)?;
            for cap in 0..=63 {
                // EINVAL past the last capability this kernel knows.
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            nix::unistd::setuid(uid)?;
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing but stdio crosses exec: a socket opened outside the
            // sandbox (and so outside its hooks) and left inheritable by
            // the caller would be a connection the policy never saw.
            // CLOEXEC rather than close keeps std's exec-error pipe working.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_refused_by_name_and_by_uid() {
        for spec in ["root", "0"] {
            let err = resolve_user(spec).unwrap_err().to_string();
            assert!(err.contains("is root"), "{err}");
        }
    }

    #[test]
    fn nobody_resolves() {
        let w = resolve_user("nobody").unwrap();
        assert_eq!(w.uid, 65534);
    }

    #[test]
    fn unknown_users_are_named_in_the_error() {
        let err = resolve_user("no-such-user-xyz").unwrap_err().to_string();
        assert!(err.contains("no-such-user-xyz"), "{err}");
    }

    #[test]
    fn env_points_every_client_at_the_bundle() {
        let env = sandbox_env("demo", Path::new("/b.pem"));
        for var in CA_ENV_VARS {
            assert!(env.iter().any(|(k, v)| k == var && v == "/b.pem"), "{var}");
        }
    }
}
