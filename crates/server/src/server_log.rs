//! Rotation of `server.log`, the server's own output when it runs in the background.
//!
//! `tandem up` starts the server with its stdout and stderr appended to `server.log`, so
//! everything the server writes goes there: its `tracing` lines, and a panic's message too.
//! Rotating that file therefore means moving the descriptors, not a writer: once a second
//! the server looks at the file's size, and once it has reached the limit, it rotates the
//! files the way the instance logs rotate (`logfile::rotate_files`: `server.log` becomes
//! `server.log.1`, and so on, keeping a fixed number), opens a new `server.log` and points
//! its stdout and stderr at it with dup2(2). Each line goes out in one write(2) and dup2
//! swaps a descriptor atomically, so every line lands whole in exactly one file. A file can
//! pass the limit by what the server writes in that second. A server whose output goes
//! elsewhere (a terminal, a pipe) rotates nothing.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_supervisor::logfile::rotate_files;

/// How often the size is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The rotation of one log file that some of this process's descriptors write to.
#[derive(Debug)]
pub(crate) struct ServerLog {
    path: PathBuf,
    /// The descriptors (of `fds` given to [`ServerLog::for_fds`]) that write to `path`.
    fds: Vec<RawFd>,
    max_bytes: u64,
    max_files: u32,
}

impl ServerLog {
    /// The rotation of `path` for those of `fds` that write to that very file; `None` when
    /// none of them does.
    pub(crate) fn for_fds(
        path: &Path,
        fds: &[RawFd],
        max_bytes: u64,
        max_files: u32,
    ) -> Option<ServerLog> {
        let file = std::fs::metadata(path).ok()?;
        let fds: Vec<RawFd> = fds
            .iter()
            .copied()
            .filter(|fd| fd_stat(*fd).is_some_and(|s| (s.dev, s.ino) == (file.dev(), file.ino())))
            .collect();
        if fds.is_empty() {
            return None;
        }
        Some(ServerLog {
            path: path.to_path_buf(),
            fds,
            max_bytes,
            max_files,
        })
    }

    /// Rotates when the file has reached `max_bytes`; returns whether it did.
    pub(crate) fn rotate_if_full(&self) -> io::Result<bool> {
        let size = fd_stat(self.fds[0]).map(|s| s.size).unwrap_or(0);
        if self.max_bytes == 0 || size < self.max_bytes {
            return Ok(false);
        }
        rotate_files(&self.path, self.max_files)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        for fd in &self.fds {
            // SAFETY: dup2(2) on descriptors this process owns; `fd` now names the new file
            // and the old file's description is released once nothing else refers to it.
            if unsafe { libc::dup2(file.as_raw_fd(), *fd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(true)
    }

    /// Checks once a second for as long as the server runs. A rotation that fails is
    /// logged once, and the file then grows as before.
    pub(crate) fn spawn(self) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = self.rotate_if_full() {
                    tracing::error!(
                        "cannot rotate {}: {e}; it is no longer rotated",
                        self.path.display()
                    );
                    return;
                }
            }
        });
    }
}

struct FdStat {
    dev: u64,
    ino: u64,
    size: u64,
}

fn fd_stat(fd: RawFd) -> Option<FdStat> {
    // SAFETY: fstat(2) fills the zeroed struct we own; an invalid descriptor is an error.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return None;
        }
        Some(FdStat {
            dev: st.st_dev,
            ino: st.st_ino,
            size: u64::try_from(st.st_size).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tandem_supervisor::logfile::rotated_path;

    fn line(i: usize) -> String {
        format!("2026-11-26T07:00:00.000Z  INFO tandem_server: line {i:04} of the server log\n")
    }

    /// Writes `n` lines through a descriptor appending to `path`, checking for a rotation
    /// after each, as the server does once a second.
    fn write_lines(log: &ServerLog, file: &mut std::fs::File, n: usize) -> usize {
        let mut rotations = 0;
        for i in 0..n {
            file.write_all(line(i).as_bytes()).unwrap();
            if log.rotate_if_full().unwrap() {
                rotations += 1;
            }
        }
        rotations
    }

    fn open_append(path: &Path) -> std::fs::File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn past_the_limit_the_file_rotates_and_every_line_is_kept_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let mut file = open_append(&path);
        let limit = 1000;
        let log = ServerLog::for_fds(&path, &[file.as_raw_fd()], limit, 5).unwrap();
        let n = 60; // ~4.6 KB: four rotations, all within the five files kept
        let rotations = write_lines(&log, &mut file, n);
        assert_eq!(rotations, 4);

        let mut all = String::new();
        for k in (1..=5).rev() {
            let p = rotated_path(&path, k);
            if let Ok(text) = std::fs::read_to_string(&p) {
                let size = text.len() as u64;
                assert!(
                    size >= limit && size < limit + line(0).len() as u64,
                    "{} has {size} bytes",
                    p.display()
                );
                all.push_str(&text);
            }
        }
        all.push_str(&std::fs::read_to_string(&path).unwrap());
        let expected: String = (0..n).map(line).collect();
        assert_eq!(all, expected, "no line lost, split or written twice");
        assert!(!rotated_path(&path, 5).exists());
    }

    #[test]
    fn only_max_files_rotated_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let mut file = open_append(&path);
        let log = ServerLog::for_fds(&path, &[file.as_raw_fd()], 1000, 2).unwrap();
        assert_eq!(write_lines(&log, &mut file, 60), 4);
        assert!(rotated_path(&path, 1).exists() && rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        // The newest lines are in the current file, those just before them in .1 and .2.
        let number = |l: &str| -> usize { l.split("line ").nth(1).unwrap()[..4].parse().unwrap() };
        let text = |p: &Path| std::fs::read_to_string(p).unwrap();
        let (two, one, current) = (
            text(&rotated_path(&path, 2)),
            text(&rotated_path(&path, 1)),
            text(&path),
        );
        assert!(current.ends_with(&line(59)), "{current}");
        assert_eq!(
            number(two.lines().last().unwrap()) + 1,
            number(one.lines().next().unwrap())
        );
        assert_eq!(
            number(one.lines().last().unwrap()) + 1,
            number(current.lines().next().unwrap())
        );
    }

    #[test]
    fn output_that_goes_elsewhere_is_not_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        std::fs::write(&path, "").unwrap();
        let other = open_append(&dir.path().join("other.log"));
        assert!(ServerLog::for_fds(&path, &[other.as_raw_fd()], 1000, 5).is_none());
        assert!(
            ServerLog::for_fds(
                &dir.path().join("missing.log"),
                &[other.as_raw_fd()],
                1000,
                5
            )
            .is_none()
        );
    }
}
