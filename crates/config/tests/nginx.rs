//! `[proxy] mode = "nginx"` and `[proxy.nginx]`: defaults, paths, and
//! errors with line and column.

use cutover_config::{Config, NginxConfig};
use std::path::{Path, PathBuf};

const APP: &str = "\n[[app]]\nname = \"web\"\n[app.process]\ncommand = [\"./web\"]\n";

fn parse(text: &str) -> Result<Config, cutover_config::ConfigError> {
    Config::parse(Path::new("/srv/cutover.toml"), &format!("{text}{APP}"))
}

fn nginx(text: &str) -> NginxConfig {
    parse(text)
        .expect("valid config")
        .proxy
        .nginx
        .expect("nginx mode")
}

fn error_of(text: &str) -> String {
    parse(text).expect_err("must be rejected").to_string()
}

#[test]
fn builtin_is_the_default_and_nginx_mode_has_debian_defaults() {
    assert!(parse("").unwrap().proxy.nginx.is_none());
    assert!(parse("[proxy]\nmode = \"builtin\"\n")
        .unwrap()
        .proxy
        .nginx
        .is_none());
    let n = nginx("[proxy]\nmode = \"nginx\"\n");
    assert_eq!(n.conf, Path::new("/etc/nginx/nginx.conf"));
    assert_eq!(n.include_dir, Path::new("/etc/nginx/conf.d"));
    assert_eq!(n.pid_file, Path::new("/run/nginx.pid"));
    assert_eq!(n.test, ["nginx", "-t", "-c", "/etc/nginx/nginx.conf"]);
    assert_eq!(
        n.reload,
        ["nginx", "-s", "reload", "-c", "/etc/nginx/nginx.conf"]
    );
    assert_eq!(n.listen, ["80"]);
    assert!(n.ssh.is_none());
    assert_eq!(
        n.include_path("web"),
        Path::new("/etc/nginx/conf.d/web.upstream.conf")
    );
    assert_eq!(NginxConfig::upstream_name("web"), "cutover_web");
}

#[test]
fn settings_are_read_and_local_paths_resolved_against_the_config_file() {
    let n = nginx(
        r#"[proxy]
mode = "nginx"
listen = ["0.0.0.0:8080"]
[proxy.nginx]
conf = "nginx/nginx.conf"
include_dir = "nginx/cutover"
reload = ["systemctl", "reload", "nginx"]
"#,
    );
    assert_eq!(n.conf, Path::new("/srv/nginx/nginx.conf"));
    assert_eq!(n.include_dir, Path::new("/srv/nginx/cutover"));
    assert_eq!(n.reload, ["systemctl", "reload", "nginx"]);
    assert_eq!(n.test, ["nginx", "-t", "-c", "/srv/nginx/nginx.conf"]);
    assert_eq!(n.listen, ["0.0.0.0:8080"]);
}

#[test]
fn ssh_settings_default_to_strict_host_key_checking() {
    let n = nginx(
        r#"[proxy]
mode = "nginx"
[proxy.nginx]
ssh = { host = "10.0.0.5", user = "deploy", identity_file = "keys/deploy" }
"#,
    );
    let ssh = n.ssh.expect("ssh");
    assert_eq!(ssh.host, "10.0.0.5");
    assert_eq!(ssh.user.as_deref(), Some("deploy"));
    assert_eq!(ssh.port, 22);
    assert_eq!(ssh.identity_file, Some(PathBuf::from("/srv/keys/deploy")));
    assert!(ssh.strict_host_key_checking);
}

#[test]
fn errors_name_line_and_column() {
    let cases = [
        (
            "[proxy]\nmode = \"haproxy\"\n",
            "/srv/cutover.toml:2:8: ",
            "proxy mode `haproxy` is not known",
        ),
        (
            "[proxy]\n[proxy.nginx]\nconf = \"/etc/nginx/nginx.conf\"\n",
            "/srv/cutover.toml:2:1: ",
            "only used with `mode = \"nginx\"`",
        ),
        (
            "[proxy]\nmode = \"nginx\"\n[proxy.nginx]\nreload = []\n",
            "/srv/cutover.toml:4:10: ",
            "`reload` must be an argv list",
        ),
        (
            "[proxy]\nmode = \"nginx\"\n[proxy.nginx]\ninclude_dir = \"conf.d\"\nssh = { host = \"h\" }\n",
            "/srv/cutover.toml:4:15: ",
            "must be an absolute path",
        ),
        (
            "[proxy]\nmode = \"nginx\"\n[proxy.nginx]\nssh = { host = \"-oProxyCommand=sh\" }\n",
            "/srv/cutover.toml:4:16: ",
            "is not a host name",
        ),
        (
            "[proxy]\nmode = \"nginx\"\n[proxy.nginx]\nssh = { host = \"h\", user = \"a b\" }\n",
            "/srv/cutover.toml:4:",
            "is not a user name",
        ),
        (
            "[proxy]\nmode = \"nginx\"\n[proxy.nginx]\nssh = { host = \"h\", known_hosts_file = \"/a b\" }\n",
            "/srv/cutover.toml:4:",
            "known_hosts_file",
        ),
        (
            "[proxy]\nmode = \"nginx\"\n[proxy.nginx]\nssh = { host = \"h\", port = 70000 }\n",
            "/srv/cutover.toml:4:",
            "is not a port",
        ),
        (
            "[proxy]\nmode = \"nginx\"\n[proxy.nginx]\nlog_dir = \"/var/log/$host\"\n",
            "/srv/cutover.toml:4:11: ",
            "must not contain `$`",
        ),
        (
            "[proxy]\nmode = \"nginx\"\n[proxy.nginx]\ntest = [\"nginx\", \"-t\"]\nrestart = true\n",
            "/srv/cutover.toml:5:1: ",
            "unknown field `restart`",
        ),
    ];
    for (text, position, message) in cases {
        let error = error_of(text);
        assert!(error.starts_with(position), "{text:?}: {error}");
        assert!(error.contains(message), "{text:?}: {error}");
    }
}

#[test]
fn shift_needs_the_builtin_proxy() {
    let text = "[proxy]\nmode = \"nginx\"\n\n[[app]]\nname = \"web\"\nshift = { steps = [10, 100], every = \"10s\" }\n[app.process]\ncommand = [\"./web\"]\n";
    let error = Config::parse(Path::new("/srv/cutover.toml"), text)
        .expect_err("shift in nginx mode")
        .to_string();
    assert!(error.starts_with("/srv/cutover.toml:6:9: "), "{error}");
    assert!(error.contains("needs the built-in proxy"), "{error}");
}
