//! A private Postgres cluster for `pgfeed serve` without `DATABASE_URL`, and for the tests.
//!
//! The postmaster runs as a child process of pgfeed (no `pg_ctl`), with a
//! parent-death signal, so it never outlives the process that started it even
//! when that process is killed. `initdb` and `postgres` refuse to run as root:
//! as root they run as the `postgres` system user (or `nobody`), and the data
//! lives where that user can reach it.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

/// How the cluster trades durability for speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Postgres defaults: fsync on. For `pgfeed serve`.
    Durable,
    /// fsync off: for test clusters that are thrown away.
    Throwaway,
}

/// A running private cluster. Stopped (fast shutdown) when dropped.
pub struct Cluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    run_as: Option<User>,
    durability: Durability,
    postmaster: Option<Child>,
}

impl Cluster {
    /// Initializes `base/data` if it holds no cluster yet and starts Postgres on a free
    /// port of 127.0.0.1. `base` falls back to a folder under the system temp dir when
    /// the unprivileged user cannot reach it.
    pub fn start(base: &Path, durability: Durability) -> Result<Cluster> {
        let bin_dir = find_bin_dir()?;
        let run_as = if nix::unistd::geteuid().is_root() {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let base = usable_base(base, run_as.as_ref())?;
        let data_dir = base.join("data");
        let socket_dir = base.join("run");
        fs::create_dir_all(&socket_dir)?;
        if let Some(user) = &run_as {
            chown(&base, user)?;
            chown(&socket_dir, user)?;
        }
        if !data_dir.join("PG_VERSION").exists() {
            initdb(&bin_dir, &data_dir, run_as.as_ref())?;
        }
        if let Some(port) = running_port(&data_dir) {
            // Another pgfeed (a `serve`) runs this cluster: use it, and leave it running.
            return Ok(Cluster {
                bin_dir,
                data_dir,
                socket_dir,
                port,
                run_as,
                durability,
                postmaster: None,
            });
        }
        let mut cluster = Cluster {
            bin_dir,
            data_dir,
            socket_dir,
            port: free_port()?,
            run_as,
            durability,
            postmaster: None,
        };
        cluster.launch()?;
        Ok(cluster)
    }

    /// A streaming standby of `primary` (asynchronous): `pg_basebackup -R`
    /// into `base/data` unless a cluster is there already, then started on a
    /// port of its own. For tests of failover and of reading from standbys.
    pub fn start_standby(primary: &Cluster, base: &Path, durability: Durability) -> Result<Cluster> {
        let base = usable_base(base, primary.run_as.as_ref())?;
        let data_dir = base.join("data");
        let socket_dir = base.join("run");
        fs::create_dir_all(&socket_dir)?;
        if let Some(user) = &primary.run_as {
            chown(&base, user)?;
            chown(&socket_dir, user)?;
        }
        if !data_dir.join("PG_VERSION").exists() {
            fs::create_dir_all(&data_dir)?;
            fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))?;
            if let Some(user) = &primary.run_as {
                chown(&data_dir, user)?;
            }
            let mut cmd = Command::new(tool("pg_basebackup"));
            cmd.arg("-D")
                .arg(&data_dir)
                .arg("-d")
                .arg(format!("host=127.0.0.1 port={} user=postgres", primary.port))
                .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
                .current_dir(&data_dir);
            as_user(&mut cmd, primary.run_as.as_ref());
            let out = cmd.output().context("running pg_basebackup")?;
            if !out.status.success() {
                bail!("pg_basebackup failed:\n{}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let mut standby = Cluster {
            bin_dir: primary.bin_dir.clone(),
            data_dir,
            socket_dir,
            port: free_port()?,
            run_as: primary.run_as.clone(),
            durability,
            postmaster: None,
        };
        standby.launch()?;
        Ok(standby)
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) -> Result<()> {
        let mut cmd = Command::new(tool("pg_ctl"));
        cmd.arg("promote").arg("-w").arg("-D").arg(&self.data_dir);
        as_user(&mut cmd, self.run_as.as_ref());
        let out = cmd.output().context("running pg_ctl promote")?;
        if !out.status.success() {
            bail!("pg_ctl promote failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// A URL for database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The `psql` command a person can paste to write to database `name`.
    pub fn psql_command(&self, name: &str) -> String {
        format!("psql -h 127.0.0.1 -p {} -U postgres {name}", self.port)
    }

    /// Stops Postgres (fast shutdown: open sessions are ended, nothing committed is lost).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.postmaster.take() else {
            return Ok(());
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Stops and starts Postgres again on the same port (to test recovery).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    fn launch(&mut self) -> Result<()> {
        let log_path = self.data_dir.parent().unwrap_or(&self.data_dir).join("postgres.log");
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        if let Some(user) = &self.run_as {
            chown(&log_path, user)?;
        }
        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.socket_dir.display()))
            .args(["-c", "max_connections=300", "-c", "shared_buffers=128MB"]);
        if self.durability == Durability::Throwaway {
            cmd.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // Its own process group: a Ctrl-C in the terminal reaches pgfeed, which
        // closes its connections and then stops Postgres, in that order.
        cmd.process_group(0);
        as_user(&mut cmd, self.run_as.as_ref());
        // SAFETY: prctl is async-signal-safe; it runs in the child after setuid, which
        // would otherwise clear it. SIGINT asks the postmaster for a fast shutdown.
        unsafe {
            cmd.pre_exec(|| {
                if libc_prctl_pdeathsig() != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting postgres")?;
        self.postmaster = Some(child);
        self.wait_ready(&log_path)
    }

    fn wait_ready(&mut self, log_path: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.postmaster.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.postmaster = None;
                    let log = fs::read_to_string(log_path).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    bail!(
                        "postgres exited ({status}) while starting; the end of {}:\n{}",
                        log_path.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
            // The postmaster writes its state on the 8th line of postmaster.pid;
            // "ready" (a standby: "standby") means it accepts connections.
            let pid_file = fs::read_to_string(self.data_dir.join("postmaster.pid")).unwrap_or_default();
            if pid_file
                .lines()
                .nth(7)
                .is_some_and(|status| matches!(status.trim(), "ready" | "standby"))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres did not start within 60 s; see {}", log_path.display());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(error = %err, "stopping the embedded postgres");
        }
    }
}

fn libc_prctl_pdeathsig() -> i32 {
    // PR_SET_PDEATHSIG = 1; not exposed by nix for all targets, so call it directly.
    extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    // SAFETY: plain syscall wrapper with integer arguments.
    unsafe { prctl(1, Signal::SIGINT as u64, 0, 0, 0) }
}

/// The path of Postgres tool `name` (`pg_basebackup`, `pg_dump`, …) that goes
/// with the server binaries: beside them, beside what they link to (a PATH
/// folder may link only `initdb` and `postgres`), or else on PATH.
pub fn tool(name: &str) -> PathBuf {
    let Ok(bin_dir) = find_bin_dir() else {
        return PathBuf::from(name);
    };
    let linked = fs::canonicalize(bin_dir.join("postgres"))
        .ok()
        .and_then(|real| real.parent().map(|dir| dir.join(name)));
    [Some(bin_dir.join(name)), linked]
        .into_iter()
        .flatten()
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The folder holding `initdb` and `postgres`: from PATH first, then Debian's
/// `/usr/lib/postgresql/<version>/bin`, newest version first.
pub fn find_bin_dir() -> Result<PathBuf> {
    let has_all = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_all(dir))
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "no Postgres server binaries found (initdb and postgres, on PATH or in \
             /usr/lib/postgresql/<version>/bin). Install them (Debian/Ubuntu: \
             `apt-get install postgresql`) or set DATABASE_URL to use an existing server."
        ),
    }
}

fn unprivileged_user() -> Result<User> {
    for name in ["postgres", "nobody"] {
        if let Some(user) = User::from_name(name)? {
            return Ok(user);
        }
    }
    bail!("running as root, but there is no `postgres` or `nobody` user to run Postgres as")
}

/// `base` itself when `user` can reach it, else a folder under the temp dir.
fn usable_base(base: &Path, user: Option<&User>) -> Result<PathBuf> {
    fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    let base = base.canonicalize()?;
    let Some(user) = user else { return Ok(base) };
    if reachable_by_others(&base) {
        return Ok(base);
    }
    let name: String = base
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let fallback = std::env::temp_dir().join(format!("pgfeed-{}", name.trim_start_matches('_')));
    tracing::warn!(
        wanted = %base.display(),
        using = %fallback.display(),
        "user {} cannot reach the data directory; keeping the cluster under the temp dir",
        user.name
    );
    fs::create_dir_all(&fallback)?;
    Ok(fallback)
}

/// True when every ancestor of `dir` lets other users through (o+x).
fn reachable_by_others(dir: &Path) -> bool {
    dir.ancestors()
        .skip(1)
        .all(|p| fs::metadata(p).map(|m| m.mode() & 0o001 != 0).unwrap_or(false))
}

fn chown(path: &Path, user: &User) -> Result<()> {
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).with_context(|| format!("chown {}", path.display()))
}

fn as_user(cmd: &mut Command, user: Option<&User>) {
    if let Some(user) = user {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw()).env("HOME", &user.dir);
    }
    cmd.env("LC_ALL", "C");
}

fn initdb(bin_dir: &Path, data_dir: &Path, user: Option<&User>) -> Result<()> {
    fs::create_dir_all(data_dir)?;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))?;
    if let Some(user) = user {
        chown(data_dir, user)?;
    }
    let mut cmd = Command::new(bin_dir.join("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        .current_dir(data_dir);
    as_user(&mut cmd, user);
    let out = cmd.output().context("running initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed for {}:\n{}{}",
            data_dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The port of a Postgres already running on `data_dir` and ready, if one is:
/// `postmaster.pid` names its pid (line 1), port (line 4) and state (line 8).
fn running_port(data_dir: &Path) -> Option<u16> {
    let pid_file = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = pid_file.lines().collect();
    let pid: i32 = lines.first()?.trim().parse().ok()?;
    let port: u16 = lines.get(3)?.trim().parse().ok()?;
    let alive = kill(Pid::from_raw(pid), None).is_ok();
    (alive && lines.get(7).is_some_and(|state| state.trim() == "ready")).then_some(port)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
