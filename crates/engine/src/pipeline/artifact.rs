//! Keeping the build's artifact: the one file the `artifact` glob names in
//! the checkout, copied out of the workspace so the release stays runnable
//! after the next build cleans it.

use cutover_config::source::glob_match;
use std::path::{Path, PathBuf};

/// Finds the one file the artifact glob names in the checkout and copies it
/// to `into/<file name>`, so the release stays runnable after the next
/// build cleans the workspace.
pub(super) fn keep_artifact(
    workspace: &Path,
    pattern: &str,
    into: &Path,
) -> Result<PathBuf, String> {
    let found = find_files(workspace, pattern);
    let file = match found.as_slice() {
        [] => {
            return Err(format!(
                "the build produced no file matching artifact = \"{pattern}\" (in {})",
                workspace.display()
            ))
        }
        [one] => one.clone(),
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|p| p.strip_prefix(workspace).unwrap_or(p).display().to_string())
                .collect();
            return Err(format!(
                "artifact = \"{pattern}\" matches {} files ({}); make the glob name exactly one",
                many.len(),
                names.join(", ")
            ));
        }
    };
    let root = std::fs::canonicalize(workspace).map_err(|e| e.to_string())?;
    let real = std::fs::canonicalize(&file).map_err(|e| e.to_string())?;
    if !real.starts_with(&root) {
        return Err(format!(
            "the artifact {} leads outside the workspace; refusing it",
            file.display()
        ));
    }
    let name = file
        .file_name()
        .ok_or_else(|| "the artifact has no file name".to_string())?;
    private_dir(into).map_err(|e| format!("cannot create {}: {e}", into.display()))?;
    let target = into.join(name);
    let partial = into.join(format!(".{}.partial", name.to_string_lossy()));
    std::fs::copy(&real, &partial)
        .and_then(|_| owner_only(&partial))
        .and_then(|()| std::fs::rename(&partial, &target))
        .map_err(|e| format!("cannot copy the artifact to {}: {e}", target.display()))?;
    Ok(target)
}

/// A directory only its owner can enter (state is private).
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The artifact keeps its owner's bits (an executable stays one) and
/// loses everyone else's.
fn owner_only(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file)?.permissions().mode() & 0o700;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))
}

/// Files matching a relative glob (`*` and `?` within one path component).
fn find_files(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut current = vec![root.to_path_buf()];
    for component in pattern.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let mut next = Vec::new();
        for dir in &current {
            if component.contains(['*', '?']) {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if let Some(text) = name.to_str() {
                        if text != ".git" && glob_match(component, text) {
                            next.push(dir.join(text));
                        }
                    }
                }
            } else {
                let path = dir.join(component);
                if path.symlink_metadata().is_ok() {
                    next.push(path);
                }
            }
        }
        current = next;
    }
    current.retain(|p| p.is_file());
    current.sort();
    current
}
