//! The workspace's built binaries, next to the test executable's directory
//! (`target/<profile>/`).

use std::path::PathBuf;

/// The directory cargo puts the workspace's binaries in: the parent of the
/// running test's `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable's directory");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The built binary `name`; fails clearly when it was not built.
pub fn built(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, done by scripts/test)",
        path.display()
    );
    path
}

/// `cutover`, the daemon and CLI.
pub fn cutover() -> PathBuf {
    built("cutover")
}

/// `cutover-testapp`, the release the end-to-end tests deploy.
pub fn testapp() -> PathBuf {
    built("cutover-testapp")
}
