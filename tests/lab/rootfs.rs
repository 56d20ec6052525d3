//! Root filesystems for images made without a registry: busybox plus
//! binaries of this machine with the C libraries they load, at the paths
//! they have here, so they run unchanged inside a container.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{run, Lab};

/// A root filesystem being assembled in a directory of the lab.
pub struct Rootfs {
    root: PathBuf,
}

impl Rootfs {
    /// An empty tree at `root` with the directories every image has and
    /// busybox at `/bin/busybox` with `applets` linked in `/bin`.
    pub fn busybox(root: &Path, applets: &[&str]) -> Result<Self> {
        for d in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).context("copying busybox")?;
        for applet in applets {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        Ok(Rootfs {
            root: root.to_owned(),
        })
    }

    /// Copies `binary` of this machine to `dest` in the tree (its own path
    /// when `None`), and every library it loads to the library's own path.
    pub fn binary(&mut self, binary: &Path, dest: Option<&str>) -> Result<&mut Self> {
        let dest = dest.map_or_else(|| binary.to_owned(), PathBuf::from);
        self.copy_in(binary, &dest)?;
        for lib in libraries(binary)? {
            self.copy_in(&lib, &lib)?;
        }
        Ok(self)
    }

    /// Copies a directory of this machine (plugins a binary loads by name,
    /// such as iptables' extensions) to its own path in the tree, with the
    /// libraries its files load.
    pub fn directory(&mut self, dir: &Path) -> Result<&mut Self> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_file() {
                self.binary(&path, None)?;
            }
        }
        Ok(self)
    }

    /// A symbolic link at `path` in the tree pointing to `target`.
    pub fn symlink(&mut self, target: &str, path: &str) -> Result<&mut Self> {
        let link = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(link.parent().context("link without a directory")?)?;
        std::os::unix::fs::symlink(target, &link)?;
        Ok(self)
    }

    fn copy_in(&self, src: &Path, dest: &Path) -> Result<()> {
        let dst = self.root.join(dest.strip_prefix("/").unwrap_or(dest));
        std::fs::create_dir_all(dst.parent().context("path without a directory")?)?;
        // The content behind a link (libc.so.6 → libc-2.36.so), under the
        // name the loader asks for.
        std::fs::copy(src, &dst).with_context(|| format!("copying {} into the rootfs", src.display()))?;
        Ok(())
    }

    /// Packs the tree into `tar`, owned by the lab user.
    pub fn tar(&self, lab: &Lab, tar: &Path) -> Result<()> {
        run(Command::new("tar")
            .arg("-C")
            .arg(&self.root)
            .arg("-cf")
            .arg(tar)
            .arg("."))?;
        lab.chown(tar)
    }
}

/// The libraries `binary` loads (its dynamic loader among them), as `ldd`
/// resolves them on this machine; none for a static binary.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("ldd {}", binary.display()))?;
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
    // "/lib64/ld-linux-x86-64.so.2 (0x…)"; a static binary: "not a dynamic executable".
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            line.split("=>")
                .last()
                .and_then(|r| r.split_whitespace().next())
                .filter(|p| p.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}
