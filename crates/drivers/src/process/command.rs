//! Turning `[app.process] command` into something to execute: placeholder
//! expansion and finding the program, without any shell.

use crate::DriverError;
use cutover_config::Slot;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Values for `{port}`, `{version}`, `{slot}`, `{app}` and `{artifact}`.
pub(crate) struct Placeholders<'a> {
    pub port: u16,
    pub version: &'a str,
    pub slot: Slot,
    pub app: &'a str,
    /// Empty when the release has no artifact.
    pub artifact: &'a OsStr,
}

impl Placeholders<'_> {
    fn value(&self, name: &str) -> Option<OsString> {
        Some(match name {
            "port" => self.port.to_string().into(),
            "version" => self.version.into(),
            "slot" => self.slot.as_str().into(),
            "app" => self.app.into(),
            "artifact" => self.artifact.to_os_string(),
            _ => return None,
        })
    }

    /// Replaces known placeholders in one pass, so text coming from a value
    /// (a version like `{port}`) is never expanded again. Unknown `{names}`
    /// stay as written.
    pub fn expand(&self, template: &str) -> OsString {
        let mut out = OsString::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push(&rest[..open]);
            let from_brace = &rest[open..];
            let known = from_brace
                .find('}')
                .and_then(|close| Some((self.value(&from_brace[1..close])?, close)));
            match known {
                Some((value, close)) => {
                    out.push(value);
                    rest = &from_brace[close + 1..];
                }
                None => {
                    out.push("{");
                    rest = &from_brace[1..];
                }
            }
        }
        out.push(rest);
        out
    }
}

/// Checks that the working directory exists.
pub(crate) fn check_working_dir(dir: &Path) -> Result<(), DriverError> {
    let problem = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => "is not a directory".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("cannot be used: {e}"),
    };
    Err(DriverError::WorkingDir {
        path: dir.to_path_buf(),
        problem,
    })
}

/// Finds the program to execute, like `execvp` would: a name with a `/` is
/// a path (relative ones from `working_dir`), any other name is looked up
/// in `path_var` (the release's `PATH`). Returns the file to execute.
pub(crate) fn resolve_program(
    program: &OsStr,
    working_dir: &Path,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, DriverError> {
    let fail = |problem: String| DriverError::Program {
        program: program.to_string_lossy().into_owned(),
        problem,
    };
    if program.is_empty() {
        return Err(fail("the command's program is empty".to_string()));
    }
    if program.as_bytes().contains(&b'/') {
        let path = working_dir.join(program);
        return match executable(&path) {
            Ok(()) => Ok(path),
            Err(why) => Err(fail(format!(
                "{} {why} (relative paths start from the working directory {})",
                path.display(),
                working_dir.display()
            ))),
        };
    }
    let Some(path_var) = path_var.filter(|p| !p.is_empty()) else {
        return Err(fail(
            "was not found: PATH is not set; give the program's full path".to_string(),
        ));
    };
    let mut not_executable = None;
    for dir in std::env::split_paths(path_var) {
        // An empty PATH entry means the current (working) directory.
        let candidate = working_dir.join(dir).join(program);
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Missing::NotExecutable) => {
                not_executable.get_or_insert(candidate);
            }
            Err(_) => {}
        }
    }
    Err(fail(match not_executable {
        Some(path) => format!("was found at {} but it is not executable", path.display()),
        None => format!(
            "was not found on PATH ({}); install it or give its full path",
            path_var.to_string_lossy()
        ),
    }))
}

enum Missing {
    NotFound,
    NotAFile,
    NotExecutable,
    Unreadable(std::io::Error),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::NotFound => f.write_str("does not exist"),
            Missing::NotAFile => f.write_str("is not a file"),
            Missing::NotExecutable => f.write_str("is not executable (chmod +x it?)"),
            Missing::Unreadable(e) => write!(f, "cannot be checked: {e}"),
        }
    }
}

fn executable(path: &Path) -> Result<(), Missing> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Missing::NotFound),
        Err(e) => Err(Missing::Unreadable(e)),
        Ok(meta) if !meta.is_file() => Err(Missing::NotAFile),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => Err(Missing::NotExecutable),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders(version: &str, artifact: &str) -> String {
        let p = Placeholders {
            port: 8081,
            version,
            slot: Slot::Green,
            app: "web",
            artifact: OsStr::new(artifact),
        };
        let argv = "{app}-{slot} --port={port} v{version} [{artifact}] {unknown} {{port}} {port";
        p.expand(argv).into_string().unwrap()
    }

    #[test]
    fn expands_known_placeholders_once() {
        assert_eq!(
            placeholders("1.2", ""),
            "web-green --port=8081 v1.2 [] {unknown} {8081} {port"
        );
        assert_eq!(
            placeholders("{port}", "/a/{slot}.jar"),
            "web-green --port=8081 v{port} [/a/{slot}.jar] {unknown} {8081} {port"
        );
    }

    #[test]
    fn finds_programs_on_path_and_relative_to_the_working_dir() {
        let root = Path::new("/");
        let path = std::env::var_os("PATH");
        assert!(resolve_program(OsStr::new("sh"), root, path.as_deref()).is_ok());
        assert!(resolve_program(OsStr::new("./bin/sh"), root, None).is_ok());
        let err = resolve_program(OsStr::new("no-such-program-cutover"), root, path.as_deref())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-program-cutover") && err.contains("not found on PATH"),
            "{err}"
        );
        let err = resolve_program(OsStr::new("bin/nothing"), Path::new("/usr"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/usr/bin/nothing does not exist"), "{err}");
        let err = resolve_program(OsStr::new("./etc/passwd"), root, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not executable"), "{err}");
    }
}
