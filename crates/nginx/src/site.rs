//! What cutover writes for nginx: the per-app upstream include it rewrites
//! at every switch, and the site config a team drops in once
//! (`cutover nginx-config APP`).

use cutover_config::{AppConfig, NginxConfig};
use std::net::SocketAddr;
use std::path::Path;

/// Idle keep-alive connections each nginx worker keeps to the live release.
pub const KEEPALIVE_CONNECTIONS: u32 = 32;

/// The content of `<include_dir>/<app>.upstream.conf` routing `app` to
/// `addr` (`None`: no live release; nginx answers 502).
pub fn upstream_block(app: &str, addr: Option<SocketAddr>) -> String {
    let servers: Vec<SocketAddr> = addr.into_iter().collect();
    upstream_servers(app, &servers)
}

/// The include routing `app` to every one of `servers` (a release's
/// healthy endpoints; none: no live release, nginx answers 502).
pub fn upstream_servers(app: &str, servers: &[SocketAddr]) -> String {
    let name = NginxConfig::upstream_name(app);
    let lines: Vec<String> = match servers {
        // An upstream needs a server; this one is never tried.
        [] => vec!["server 127.0.0.1:1 down; # no live release".to_string()],
        servers => servers
            .iter()
            .map(|addr| format!("server {addr};"))
            .collect(),
    };
    let servers = lines.join("\n    ");
    format!(
        "# Written by cutover at every switch of `{app}`; edits are overwritten.\n\
         # See `cutover nginx-config {app}` for the site that uses it.\n\
         upstream {name} {{\n    {servers}\n    keepalive {KEEPALIVE_CONNECTIONS};\n}}\n"
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

/// A word of nginx's configuration language holding exactly `value`: as is
/// when it is plain, else double-quoted with `\\` and `"` escaped. (A `$`
/// stays a `$`: only `access_log` reads variables, and `log_dir` may not
/// contain one.)
fn nginx_word(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:*~+=@%,".contains(c));
    if plain {
        return value.to_string();
    }
    let mut quoted = String::from("\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// `text` on one comment line: control characters (a newline would end the
/// comment) are shown escaped.
fn comment(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// An argv as a person would type it, on one comment line.
fn argv_comment(argv: &[String]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/:=+@%,".contains(c));
            if plain {
                word.clone()
            } else {
                crate::host::quote(word)
            }
        })
        .collect();
    comment(&words.join(" "))
}

/// A complete, commented nginx site for `app`: the upstream include, the
/// keep-alive pool, the seed's forwarded headers, WebSocket upgrades,
/// `client_max_body_size` from `[proxy] max_body`, access and error logs.
/// `include_is_global`: nginx.conf already includes the upstream file (then
/// the `include` line is left commented out, or nginx would see the
/// upstream twice). Every value from the configuration is quoted for nginx,
/// or escaped in comments.
pub fn site_config(
    nginx: &NginxConfig,
    app: &AppConfig,
    max_body: u64,
    include_is_global: bool,
) -> String {
    // nginx variable names are letters, digits and `_` only.
    let connection = format!("$cutover_{}_connection", app.name.replace('-', "_"));
    format!(
        "{}\n{}\n{}\n{}",
        site_header(nginx, &app.name),
        include_block(nginx, &app.name, include_is_global),
        connection_map(&connection),
        server_block(nginx, app, max_body, &connection),
    )
}

/// What the site is for and what cutover does with the upstream file.
fn site_header(nginx: &NginxConfig, name: &str) -> String {
    let upstream = NginxConfig::upstream_name(name);
    let shown_include = comment(&nginx.include_path(name).display().to_string());
    let (test, reload) = (argv_comment(&nginx.test), argv_comment(&nginx.reload));
    format!(
        r#"# nginx site of the cutover app `{name}`, written by `cutover nginx-config {name}`.
# Put it where nginx.conf includes sites in its `http` block (Debian:
# /etc/nginx/sites-enabled/{name}.conf), then `nginx -t && nginx -s reload`.
#
# cutover owns {shown_include}.
# At every switch it writes that file atomically (temp file, fsync, rename) as
#     upstream {upstream} {{ server 127.0.0.1:PORT; keepalive {KEEPALIVE_CONNECTIONS}; }}
# with the new release's port, validates the whole configuration
#     {test}
# reloads nginx
#     {reload}
# and stops the old release only after the nginx workers that served before
# the reload have exited (or drain_timeout). If validation or the reload
# fails, the previous file is put back and the old release keeps serving.
# The file exists after the first `cutover deploy {name} --version V`:
# deploy once before enabling this site.
"#
    )
}

/// The `include` of the upstream file; commented out when nginx.conf
/// includes it already.
fn include_block(nginx: &NginxConfig, name: &str, include_is_global: bool) -> String {
    let include = nginx_word(&nginx.include_path(name).display().to_string());
    if include_is_global {
        return format!(
            "# nginx.conf already includes this file (an `include` of its directory),\n\
             # so it stays commented out here: nginx would see the upstream twice.\n\
             # include {include};\n"
        );
    }
    let upstream = NginxConfig::upstream_name(name);
    let include_dir = comment(&nginx.include_dir.display().to_string());
    format!(
        "# The upstream `{upstream}`. If nginx.conf already includes this file's\n\
         # directory (`include {include_dir}/*.conf;`), remove this line.\n\
         include {include};\n"
    )
}

/// The `Connection` header sent upstream: empty (keep-alive) unless the
/// client asks for an upgrade.
fn connection_map(connection: &str) -> String {
    format!(
        r#"# Requests are sent upstream with `Connection ""`, so that connections to the
# release stay in the keep-alive pool; WebSocket (and other) upgrades get
# `Connection: upgrade`.
map $http_upgrade {connection} {{
    default upgrade;
    ''      "";
}}
"#
    )
}

/// The `server` block: listeners, host names, body limit, logs, proxying.
fn server_block(nginx: &NginxConfig, app: &AppConfig, max_body: u64, connection: &str) -> String {
    let name = &app.name;
    let upstream = NginxConfig::upstream_name(name);
    let default_app = app.hosts.iter().any(|h| h == "*");
    let names: Vec<String> = app
        .hosts
        .iter()
        .filter(|h| *h != "*")
        .map(|h| nginx_word(h))
        .collect();
    let server_name = if names.is_empty() {
        "_".to_string()
    } else {
        names.join(" ")
    };
    let default = if default_app { " default_server" } else { "" };
    let listen: String = nginx
        .listen
        .iter()
        .map(|l| format!("    listen {}{default};\n", nginx_word(l)))
        .collect();
    let default_note = if default_app {
        "    # `hosts` has \"*\": the default server for requests of any other host.\n"
    } else {
        ""
    };
    let log_dir = nginx.log_dir.display().to_string();
    let access_log = nginx_word(&format!("{log_dir}/{name}.access.log"));
    let error_log = nginx_word(&format!("{log_dir}/{name}.error.log"));
    let max_body = size(max_body);
    format!(
        r#"server {{
{listen}{default_note}    server_name {server_name};

    # A reload (at every switch) closes the idle keep-alive client connections
    # of nginx's old workers: an HTTP/1.1 client sending a request on one at
    # that moment sees it closed before an answer (browsers and most HTTP
    # libraries retry such a request; HTTP/2 clients get a GOAWAY). If your
    # clients do not retry, this trades a connection per request for none:
    # keepalive_timeout 0;

    # [proxy] max_body: larger request bodies get 413.
    client_max_body_size {max_body};

    access_log {access_log} combined;
    error_log {error_log};

    location / {{
        proxy_pass http://{upstream};
        # HTTP/1.1 and no `Connection: close`: the upstream keep-alive pool.
        proxy_http_version 1.1;
        proxy_set_header Connection {connection};
        proxy_set_header Upgrade $http_upgrade;
        # The seed's forwarded headers, plus the scheme.
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header X-Forwarded-Proto $scheme;
        # A pooled connection the release closed is retried on a new one.
        proxy_next_upstream error timeout;
    }}
}}
"#
    )
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
        let two = upstream_servers(
            "web",
            &[
                SocketAddr::from(([10, 0, 0, 1], 30001)),
                SocketAddr::from(([10, 0, 0, 2], 30002)),
            ],
        );
        assert!(
            two.contains("    server 10.0.0.1:30001;\n    server 10.0.0.2:30002;\n    keepalive"),
            "{two}"
        );
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
    fn values_are_quoted_for_nginx_and_escaped_in_comments() {
        assert_eq!(
            nginx_word("/etc/nginx/conf.d/web.upstream.conf"),
            "/etc/nginx/conf.d/web.upstream.conf"
        );
        assert_eq!(nginx_word("/a b;c"), "\"/a b;c\"");
        assert_eq!(nginx_word("say \"hi\" \\"), "\"say \\\"hi\\\" \\\\\"");
        assert_eq!(comment("a\nb\r"), "a\\nb\\r");
        assert_eq!(
            argv_comment(&["nginx".into(), "-s".into(), "a b".into(), "x\ny".into()]),
            "nginx -s 'a b' 'x\\ny'"
        );
    }

    #[test]
    fn site_variables_stay_valid_for_app_names_with_dashes() {
        let config = cutover_config::Config::parse(
            std::path::Path::new("/srv/cutover.toml"),
            "[proxy]\nmode = \"nginx\"\n[[app]]\nname = \"my-app\"\n[app.process]\ncommand = [\"x\"]\n",
        )
        .expect("config");
        let nginx = config.proxy.nginx.as_ref().expect("nginx");
        let site = site_config(nginx, &config.apps[0], 1 << 20, false);
        assert!(
            site.contains("map $http_upgrade $cutover_my_app_connection {"),
            "{site}"
        );
        assert!(site.contains("proxy_pass http://cutover_my-app;"), "{site}");
    }

    #[test]
    fn sizes_use_nginx_units() {
        assert_eq!(size(100 << 20), "100m");
        assert_eq!(size(512 << 10), "512k");
        assert_eq!(size(1000), "1000");
    }
}
