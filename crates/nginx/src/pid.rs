//! Where nginx writes its master's pid: `[proxy.nginx] pid_file` when set,
//! else the `pid` directive of the configuration nginx itself reports
//! (`nginx -T`: the `test` command with `-t` turned into `-T`), else
//! nginx's compiled-in default as Debian builds it.

use crate::host::Host;
use cutover_config::NginxConfig;
use std::path::PathBuf;

/// nginx's own default when the configuration has no `pid`.
const DEFAULT_PID_FILE: &str = "/run/nginx.pid";

/// The argv that dumps the whole configuration: `test` with `-t` replaced
/// by `-T`, or `nginx -T -c <conf>` when `test` has no `-t`.
pub(crate) fn dump_command(config: &NginxConfig) -> Vec<String> {
    if config.test.iter().any(|arg| arg == "-t") {
        return config
            .test
            .iter()
            .map(|arg| {
                if arg == "-t" {
                    "-T".to_string()
                } else {
                    arg.clone()
                }
            })
            .collect();
    }
    vec![
        "nginx".to_string(),
        "-T".to_string(),
        "-c".to_string(),
        config.conf.display().to_string(),
    ]
}

/// The pid file named by the main context's `pid` directive in `nginx -T`
/// output (`None`: there is none, nginx uses its default).
pub(crate) fn pid_directive(dump: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut found = None;
    for line in dump.lines() {
        let code = line.split('#').next().unwrap_or("").trim();
        if depth == 0 {
            if let Some(rest) = code.strip_prefix("pid") {
                let value = rest.trim().trim_end_matches(';').trim();
                if rest.starts_with(char::is_whitespace) && !value.is_empty() {
                    found = Some(value.trim_matches(|c| c == '"' || c == '\'').to_string());
                }
            }
        }
        depth += code.matches('{').count();
        depth = depth.saturating_sub(code.matches('}').count());
    }
    found
}

/// The pid file to read: configured, else from `nginx -T`.
pub(crate) async fn discover(config: &NginxConfig, host: &Host) -> Result<PathBuf, String> {
    if !config.pid_file_from_conf {
        return Ok(config.pid_file.clone());
    }
    let argv = dump_command(config);
    let output = host.run(&argv, None).await?;
    if !output.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let dump = String::from_utf8_lossy(&output.stdout);
    match pid_directive(&dump) {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        Some(path) => Err(format!(
            "nginx's `pid {path};` is relative to its prefix; set [proxy.nginx] pid_file to the absolute path"
        )),
        None => Ok(PathBuf::from(DEFAULT_PID_FILE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_context_pid_directive_is_found() {
        let dump = "# configuration file /etc/nginx/nginx.conf:\nuser www-data;\npid /tmp/x/nginx.pid; # here\nevents { }\nhttp {\n  server { listen 80; }\n}\n";
        assert_eq!(pid_directive(dump).as_deref(), Some("/tmp/x/nginx.pid"));
        assert_eq!(pid_directive("events {}\nhttp { }\n"), None);
        // `pid` inside a block or as a prefix of another directive is not it.
        assert_eq!(pid_directive("http {\n pid /no;\n}\npidfile x;\n"), None);
    }
}
