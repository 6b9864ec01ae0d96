//! What cutover writes for nginx: the per-app upstream include it rewrites
//! at every switch, and the site config a team drops in once
//! (`cutover nginx-config APP`).

use cutover_config::{AppConfig, NginxConfig};
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;

/// Idle keep-alive connections each nginx worker keeps to the live release.
pub const KEEPALIVE_CONNECTIONS: u32 = 32;

/// The content of `<include_dir>/<app>.upstream.conf` routing `app` to
/// `addr` (`None`: no live release; nginx answers 502).
pub fn upstream_block(app: &str, addr: Option<SocketAddr>) -> String {
    let name = NginxConfig::upstream_name(app);
    let server = match addr {
        Some(addr) => format!("server {addr};"),
        // An upstream needs a server; this one is never tried.
        None => "server 127.0.0.1:1 down; # no live release".to_string(),
    };
    format!(
        "# Written by cutover at every switch of `{app}`; edits are overwritten.\n\
         # See `cutover nginx-config {app}` for the site that uses it.\n\
         upstream {name} {{\n    {server}\n    keepalive {KEEPALIVE_CONNECTIONS};\n}}\n"
    )
}

/// Whether nginx's main configuration `conf_text` (of the file `conf`)
/// already includes `include_file` with one of its `include` directives
/// (Debian's nginx.conf includes `/etc/nginx/conf.d/*.conf`). Only `*` and
/// `?` wildcards are understood; comments are skipped.
pub fn conf_includes(conf_text: &str, conf: &Path, include_file: &Path) -> bool {
    let base = conf.parent().unwrap_or(Path::new("/"));
    let target = include_file.display().to_string();
    conf_text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split([';', '{', '}']))
        .filter_map(|statement| {
            let mut words = statement.split_whitespace();
            (words.next() == Some("include")).then(|| words.next())?
        })
        .map(|pattern| pattern.trim_matches(|c| c == '"' || c == '\''))
        .any(|pattern| {
            let pattern = if Path::new(pattern).is_absolute() {
                pattern.to_string()
            } else {
                base.join(pattern).display().to_string()
            };
            glob_matches(&pattern, &target)
        })
}

/// `*` and `?` over whole paths; neither matches `/`.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == t[ti] || (p[pi] == '?' && t[ti] != '/')) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star.filter(|&(_, st)| t[st] != '/') {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// nginx's `client_max_body_size` for `bytes`.
fn size(bytes: u64) -> String {
    const M: u64 = 1 << 20;
    const K: u64 = 1 << 10;
    if bytes > 0 && bytes % M == 0 {
        format!("{}m", bytes / M)
    } else if bytes > 0 && bytes % K == 0 {
        format!("{}k", bytes / K)
    } else {
        bytes.to_string()
    }
}

/// A complete, commented nginx site for `app`: the upstream include, the
/// keep-alive pool, the seed's forwarded headers, WebSocket upgrades,
/// `client_max_body_size` from `[proxy] max_body`, access and error logs.
/// `include_is_global`: nginx.conf already includes the upstream file (then
/// the `include` line is left commented out, or nginx would see the
/// upstream twice).
pub fn site_config(
    nginx: &NginxConfig,
    app: &AppConfig,
    max_body: u64,
    include_is_global: bool,
) -> String {
    let name = &app.name;
    let upstream = NginxConfig::upstream_name(name);
    let include = nginx.include_path(name);
    let include = include.display();
    let connection = format!("$cutover_{name}_connection");
    let default_app = app.hosts.iter().any(|h| h == "*");
    let names: Vec<&str> = app
        .hosts
        .iter()
        .map(String::as_str)
        .filter(|h| *h != "*")
        .collect();
    let server_name = if names.is_empty() {
        "_".to_string()
    } else {
        names.join(" ")
    };
    let log_dir = nginx.log_dir.display();

    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# nginx site of the cutover app `{name}`, written by `cutover nginx-config {name}`."
    );
    let _ = writeln!(
        w,
        "# Put it where nginx.conf includes sites in its `http` block (Debian:"
    );
    let _ = writeln!(
        w,
        "# /etc/nginx/sites-enabled/{name}.conf), then `nginx -t && nginx -s reload`."
    );
    let _ = writeln!(w, "#");
    let _ = writeln!(
        w,
        "# cutover owns {include}. At every switch it writes that"
    );
    let _ = writeln!(w, "# file atomically (temp file, fsync, rename) as");
    let _ = writeln!(
        w,
        "#     upstream {upstream} {{ server 127.0.0.1:PORT; keepalive {KEEPALIVE_CONNECTIONS}; }}"
    );
    let _ = writeln!(
        w,
        "# with the new release's port, validates the whole configuration"
    );
    let _ = writeln!(
        w,
        "# (`{}`), reloads nginx (`{}`)",
        nginx.test.join(" "),
        nginx.reload.join(" ")
    );
    let _ = writeln!(
        w,
        "# and stops the old release only after the nginx workers that served before"
    );
    let _ = writeln!(
        w,
        "# the reload have exited (or drain_timeout). If validation or the reload"
    );
    let _ = writeln!(
        w,
        "# fails, the previous file is put back and the old release keeps serving."
    );
    let _ = writeln!(
        w,
        "# The file exists after the first `cutover deploy {name} --version V`:"
    );
    let _ = writeln!(w, "# deploy once before enabling this site.");
    let _ = writeln!(w);
    if include_is_global {
        let _ = writeln!(
            w,
            "# nginx.conf already includes this file (an `include` of its directory),"
        );
        let _ = writeln!(
            w,
            "# so it stays commented out here: nginx would see the upstream twice."
        );
        let _ = writeln!(w, "# include {include};");
    } else {
        let _ = writeln!(
            w,
            "# The upstream `{upstream}`. If nginx.conf already includes this file's"
        );
        let _ = writeln!(
            w,
            "# directory (`include {}/*.conf;`), remove this line.",
            nginx.include_dir.display()
        );
        let _ = writeln!(w, "include {include};");
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "# Requests are sent upstream with `Connection \"\"`, so that connections to the"
    );
    let _ = writeln!(
        w,
        "# release stay in the keep-alive pool; WebSocket (and other) upgrades get"
    );
    let _ = writeln!(w, "# `Connection: upgrade`.");
    let _ = writeln!(w, "map $http_upgrade {connection} {{");
    let _ = writeln!(w, "    default upgrade;");
    let _ = writeln!(w, "    ''      \"\";");
    let _ = writeln!(w, "}}");
    let _ = writeln!(w);
    let _ = writeln!(w, "server {{");
    for listen in &nginx.listen {
        let default = if default_app { " default_server" } else { "" };
        let _ = writeln!(w, "    listen {listen}{default};");
    }
    if default_app {
        let _ = writeln!(
            w,
            "    # `hosts` has \"*\": the default server for requests of any other host."
        );
    }
    let _ = writeln!(w, "    server_name {server_name};");
    let _ = writeln!(w);
    let _ = writeln!(w, "    # [proxy] max_body: larger request bodies get 413.");
    let _ = writeln!(w, "    client_max_body_size {};", size(max_body));
    let _ = writeln!(w);
    let _ = writeln!(w, "    access_log {log_dir}/{name}.access.log combined;");
    let _ = writeln!(w, "    error_log {log_dir}/{name}.error.log;");
    let _ = writeln!(w);
    let _ = writeln!(w, "    location / {{");
    let _ = writeln!(w, "        proxy_pass http://{upstream};");
    let _ = writeln!(
        w,
        "        # HTTP/1.1 and no `Connection: close`: the upstream keep-alive pool."
    );
    let _ = writeln!(w, "        proxy_http_version 1.1;");
    let _ = writeln!(w, "        proxy_set_header Connection {connection};");
    let _ = writeln!(w, "        proxy_set_header Upgrade $http_upgrade;");
    let _ = writeln!(
        w,
        "        # The seed's forwarded headers, plus the scheme."
    );
    let _ = writeln!(w, "        proxy_set_header Host $host;");
    let _ = writeln!(w, "        proxy_set_header X-Real-IP $remote_addr;");
    let _ = writeln!(
        w,
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
    );
    let _ = writeln!(w, "        proxy_set_header X-Forwarded-Host $host;");
    let _ = writeln!(w, "        proxy_set_header X-Forwarded-Proto $scheme;");
    let _ = writeln!(
        w,
        "        # A pooled connection the release closed is retried on a new one."
    );
    let _ = writeln!(w, "        proxy_next_upstream error timeout;");
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_block_has_the_server_and_the_pool() {
        let text = upstream_block("web", Some(SocketAddr::from(([127, 0, 0, 1], 8081))));
        assert!(
            text.contains(
                "upstream cutover_web {\n    server 127.0.0.1:8081;\n    keepalive 32;\n}"
            ),
            "{text}"
        );
        assert!(upstream_block("web", None).contains("down;"));
    }

    #[test]
    fn includes_are_found_with_globs_and_relative_paths() {
        let conf = Path::new("/etc/nginx/nginx.conf");
        let file = Path::new("/etc/nginx/conf.d/web.upstream.conf");
        let debian =
            "http {\n  include /etc/nginx/mime.types;\n  include /etc/nginx/conf.d/*.conf;\n}";
        assert!(conf_includes(debian, conf, file));
        assert!(conf_includes("http { include conf.d/*.conf; }", conf, file));
        assert!(!conf_includes(
            "http { # include conf.d/*.conf;\n }",
            conf,
            file
        ));
        assert!(!conf_includes(
            "http { include sites-enabled/*; }",
            conf,
            file
        ));
        assert!(!conf_includes(
            "http { include /etc/nginx/*.conf; }",
            conf,
            file
        ));
        assert!(conf_includes(
            "include \"/etc/nginx/conf.d/web.*\";",
            conf,
            file
        ));
    }

    #[test]
    fn sizes_use_nginx_units() {
        assert_eq!(size(100 << 20), "100m");
        assert_eq!(size(512 << 10), "512k");
        assert_eq!(size(1000), "1000");
    }
}
