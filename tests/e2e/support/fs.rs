//! A small filesystem of the test's own, for disk-full tests.

/// A small tmpfs, unmounted on drop. Needs root (CI and the test machines
/// run as root); the test fails loudly rather than skipping without it.
pub struct SmallFs(std::path::PathBuf);

impl SmallFs {
    /// Mounts a tmpfs of `size` (`"2m"`) on the existing directory `dir`.
    pub fn mount(dir: &std::path::Path, size: &str) -> Self {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs failed: this test needs root");
        Self(dir.to_owned())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
