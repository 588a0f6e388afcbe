//! `cyxcloud up` run from a source checkout (`cargo run --release -p cyxcloud-cli -- up`):
//! cargo has built only this binary, so before starting anything `up` makes sure the system
//! packages the daemons need are installed (`scripts/deps build run`: apt-get as root, else
//! the exact install command) and builds the daemons with the same cargo and profile, next
//! to this executable. Run again after a `git pull`, the same step rebuilds what changed.
//!
//! A checkout is recognised by the variables `cargo run` sets for the program it runs:
//! `CARGO` (the cargo binary) and `CARGO_MANIFEST_DIR` (this crate, one level below the
//! workspace root). An installed `cyxcloud` has neither and never builds anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The daemons `up` starts, by package and binary name.
pub const DAEMONS: &[(&str, &str)] = &[
    ("cyxcloud-gateway", "cyxcloud-gateway"),
    ("cyxcloud-node", "cyxcloud-node"),
    ("cyxcloud-rebalancer", "cyxcloud-rebalancer"),
    ("cyxcloud-mountd", "cyxcloud-mountd"),
];

/// A source checkout this process was started from by cargo.
#[derive(Debug)]
pub struct Checkout {
    cargo: PathBuf,
    root: PathBuf,
}

impl Checkout {
    /// The checkout, when this process was started by `cargo run` in one.
    pub fn detect() -> Option<Checkout> {
        let cargo = PathBuf::from(std::env::var_os("CARGO")?);
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
        let root = manifest.parent()?.to_path_buf();
        let toml = std::fs::read_to_string(root.join("Cargo.toml")).ok()?;
        toml.contains("[workspace]")
            .then_some(Checkout { cargo, root })
    }

    /// Installs missing system packages, then builds the daemons into this executable's
    /// directory. Progress goes to the terminal; any failure says what to do.
    pub fn prepare(&self) -> anyhow::Result<()> {
        let deps = self.root.join("scripts").join("deps");
        let status = Command::new("bash")
            .arg(&deps)
            .args(["build", "run"])
            .status()
            .with_context(|| format!("cannot run {}", deps.display()))?;
        if !status.success() {
            bail!(
                "the system packages the daemons need are missing (see above); install them and run `cyxcloud up` again"
            );
        }
        let exe = std::env::current_exe().context("cannot locate this executable")?;
        let profile = profile_of(&exe)?;
        let mut cmd = Command::new(&self.cargo);
        cmd.arg("build")
            .arg("--manifest-path")
            .arg(self.root.join("Cargo.toml"));
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        for (package, _) in DAEMONS {
            cmd.args(["-p", package]);
        }
        eprintln!(
            "Building the daemons ({profile} profile; the first build takes several minutes)..."
        );
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", self.cargo.display()))?;
        if !status.success() {
            bail!(
                "building the daemons failed ({status}); the compiler's messages are above. \
                 Fix the cause and run `cyxcloud up` again"
            );
        }
        let dir = exe.parent().context("executable without a directory")?;
        for (_, bin) in DAEMONS {
            if !dir.join(bin).exists() {
                bail!(
                    "cargo built the daemons, but {} is not next to {}: is CARGO_TARGET_DIR or \
                     --target different from the `cargo run` that started this?",
                    bin,
                    exe.display()
                );
            }
        }
        Ok(())
    }
}

/// The cargo profile an executable was built with: the name of its directory under the
/// target dir (`debug`, `release`, or a custom profile's name).
fn profile_of(exe: &Path) -> anyhow::Result<String> {
    exe.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("cannot tell the cargo profile of {}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_is_the_directory_under_the_target_dir() {
        assert_eq!(
            profile_of(Path::new("/w/target/release/cyxcloud")).unwrap(),
            "release"
        );
        assert_eq!(
            profile_of(Path::new(
                "/w/target/x86_64-unknown-linux-gnu/debug/cyxcloud"
            ))
            .unwrap(),
            "debug"
        );
        assert!(profile_of(Path::new("cyxcloud")).is_err());
    }
}
