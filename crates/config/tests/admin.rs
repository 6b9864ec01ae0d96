//! `[admin]` for remote operation: what is accepted, what `config check`
//! refuses (with a location) before `serve` could fail or run unsafely.

#![allow(clippy::unwrap_used)]

use cutover_config::Config;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const APP: &str = r#"
state_dir = "state"
[[app]]
name = "web"
[app.process]
command = ["sleep", "60"]
"#;

fn parse(text: &str) -> Result<Config, cutover_config::ConfigError> {
    Config::parse(Path::new("/srv/cutover.toml"), text)
}

fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_tcp_listener_with_tokens_tls_hosts_and_origins_resolves() {
    let config = parse(&format!(
        r#"{APP}
[admin]
listen = "0.0.0.0:9900"
token_file = "/etc/cutover/tokens"
read_tokens_file = "readers"
tls = {{ cert = "admin.crt", key = "/etc/cutover/admin.key" }}
hosts = ["Cutover.Example.com:9900", "10.0.0.5"]
cors_origins = ["https://ops.example.com/"]
"#
    ))
    .unwrap();
    let remote = config.admin.remote.unwrap();
    assert_eq!(remote.listen.to_string(), "0.0.0.0:9900");
    assert_eq!(remote.token_file, Path::new("/etc/cutover/tokens"));
    assert_eq!(remote.read_tokens_file.unwrap(), Path::new("/srv/readers"));
    let tls = remote.tls.unwrap();
    assert_eq!(tls.cert, Path::new("/srv/admin.crt"));
    assert_eq!(tls.key, Path::new("/etc/cutover/admin.key"));
    assert_eq!(remote.hosts, vec!["cutover.example.com", "10.0.0.5"]);
    assert_eq!(remote.cors_origins, vec!["https://ops.example.com"]);
    assert!(parse(APP).unwrap().admin.remote.is_none());
}

#[test]
fn unsafe_or_meaningless_admin_settings_are_refused_with_a_location() {
    for (admin, expect) in [
        ("listen = \"127.0.0.1:9900\"", "needs `token_file`"),
        (
            "listen = \"0.0.0.0:9900\"\ntoken_file = \"t\"",
            "not a loopback address",
        ),
        (
            "listen = \"192.168.1.2:9900\"\ntoken_file = \"t\"",
            "set [admin] tls",
        ),
        ("token_file = \"t\"", "has no `listen`"),
        ("cors_origins = [\"https://a.example\"]", "has no `listen`"),
        (
            "listen = \"localhost:9900\"\ntoken_file = \"t\"",
            "not a listen address",
        ),
        (
            "listen = \"127.0.0.1:9900\"\ntoken_file = \"t\"\ncors_origins = [\"*\"]",
            "not an origin",
        ),
        (
            "listen = \"127.0.0.1:9900\"\ntoken_file = \"t\"\nhosts = [\"a b\"]",
            "not a host name",
        ),
        (
            "listen = \"127.0.0.1:9900\"\ntoken_file = \"t\"\ntoken = \"inline\"",
            "unknown field `token`",
        ),
    ] {
        let message = error_of(&format!("{APP}[admin]\n{admin}\n"));
        assert!(message.contains(expect), "{admin}: {message}");
        assert!(
            message.starts_with("/srv/cutover.toml:"),
            "{admin}: {message}"
        );
    }
}

#[test]
fn the_admin_listener_may_not_share_a_port_with_another_listener_or_a_slot() {
    let clash = error_of(&format!(
        "{APP}[proxy]\nlisten = [\"0.0.0.0:8080\"]\n[admin]\nlisten = \"127.0.0.1:8080\"\ntoken_file = \"t\"\n"
    ));
    assert!(clash.contains("uses the port of [proxy] listen"), "{clash}");
    let slot = error_of(&format!(
        "{APP}ports = {{ blue = 9900, green = 9901 }}\n[admin]\nlisten = \"127.0.0.1:9900\"\ntoken_file = \"t\"\n"
    ));
    assert!(slot.contains("[admin] listen"), "{slot}");
}

#[test]
fn config_check_refuses_token_files_others_may_read_or_that_hold_no_usable_token() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let check = |token_file: &str| {
        let file = dir.path().join("cutover.toml");
        std::fs::write(
            &file,
            format!("{APP}[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{token_file}\"\n"),
        )
        .unwrap();
        Config::load_checked(&file)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    write("good", "a-token-of-enough-length\n", 0o600);
    write("open", "a-token-of-enough-length\n", 0o644);
    write("group", "a-token-of-enough-length\n", 0o640);
    write("short", "short\n", 0o600);
    write("empty", "# no token yet\n", 0o600);
    assert_eq!(check("good"), Ok(()));
    for (file, expect) in [
        ("open", "chmod 600"),
        ("group", "mode 0640"),
        ("short", "at least 16 characters"),
        ("empty", "holds no token"),
        ("missing", "cannot read the token file"),
    ] {
        let error = check(file).unwrap_err();
        assert!(error.contains(expect), "{file}: {error}");
        assert!(error.contains("cutover.toml:9:14:"), "{file}: {error}");
        assert!(!error.contains("a-token-of-enough-length"), "{error}");
    }
}

#[test]
fn webhooks_without_a_listener_of_their_own_go_on_the_proxy_except_in_nginx_mode() {
    let config = parse(&format!(
        "{APP}[webhook]\ngithub_secret_env = \"GH_SECRET\"\n"
    ))
    .unwrap();
    let webhook = config.webhook.unwrap();
    assert_eq!(webhook.listen, None);
    assert_eq!(webhook.path_prefix, "/_cutover/hooks");
    let nginx = error_of(&format!(
        "{APP}[proxy]\nmode = \"nginx\"\n[proxy.nginx]\nconf = \"/etc/nginx/nginx.conf\"\ninclude_dir = \"/etc/nginx/conf.d\"\n[webhook]\ngithub_secret_env = \"GH_SECRET\"\n"
    ));
    assert!(
        nginx.contains("needs `listen` in nginx front mode"),
        "{nginx}"
    );
}
