//! The part of `/proc/self/mountinfo` cgroup detection needs: where each cgroup hierarchy
//! is mounted and, for v1, which controllers it carries.

use std::path::PathBuf;

/// One cgroup mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub(crate) mount_point: PathBuf,
    /// `true` for the unified (v2) hierarchy.
    pub(crate) v2: bool,
    /// v1 controllers named in the super options (`memory`, `cpu`, `cpuacct`, ...).
    pub(crate) controllers: Vec<String>,
}

/// Every cgroup (v1) and cgroup2 mount, in file order. Lines that do not parse are skipped.
///
/// A line is `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`;
/// the optional fields vary in number, so the filesystem type is found after the `-`.
pub(crate) fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<CgroupMount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let mount_point = unescape(fields.get(4)?);
    let dash = fields.iter().position(|f| *f == "-")?;
    let fstype = *fields.get(dash + 1)?;
    let super_options = fields.get(dash + 3).copied().unwrap_or("");
    match fstype {
        "cgroup2" => Some(CgroupMount {
            mount_point,
            v2: true,
            controllers: Vec::new(),
        }),
        "cgroup" => Some(CgroupMount {
            mount_point,
            v2: false,
            controllers: super_options
                .split(',')
                .filter(|o| !o.contains('=') && !matches!(*o, "rw" | "ro"))
                .map(str::to_owned)
                .collect(),
        }),
        _ => None,
    }
}

/// Mount points escape space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_and_v2_mounts() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /tmp/with\\040space rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
        let mounts = cgroup_mounts(text);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            mounts[1].mount_point,
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert!(!mounts[2].controllers.iter().any(|c| c.contains("systemd")));
        assert!(mounts[3].v2);
        assert_eq!(mounts[3].mount_point, PathBuf::from("/tmp/with space"));
    }
}
