//! Configurations that would only fail once running are refused when read,
//! each with the file, line and column of the problem and what to do.

use cutover_config::{Config, MAX_CONFIG_BYTES};
use std::path::Path;

const APP: &str = r#"
[[app]]
name = "web"
[app.health]
path = "/health"
[app.process]
command = ["app", "{port}"]
ports = { blue = 18081, green = 18082 }
"#;

fn error_of(text: &str) -> String {
    Config::parse(Path::new("/srv/cutover.toml"), text)
        .expect_err("config must be refused")
        .to_string()
}

/// The error names the file with a line and column, and says `problem`.
fn assert_refused_at(text: &str, line: usize, problem: &str) {
    let error = error_of(text);
    assert!(
        error.starts_with(&format!("/srv/cutover.toml:{line}:")),
        "must be located on line {line}: {error}"
    );
    assert!(error.contains(problem), "must say `{problem}`: {error}");
}

#[test]
fn a_slot_port_equal_to_the_proxy_port_is_refused() {
    let text = format!("[proxy]\nlisten = [\"0.0.0.0:18081\"]\n{APP}");
    assert_refused_at(
        &text,
        10,
        "ports.blue = 18081 is the port of [proxy] listen",
    );
}

#[test]
fn a_slot_port_equal_to_the_default_proxy_port_is_refused() {
    let text = APP.replace("green = 18082", "green = 8080");
    assert_refused_at(&text, 8, "ports.green = 8080 is the port of [proxy] listen");
}

#[test]
fn a_slot_port_equal_to_the_webhook_port_is_refused() {
    let text = format!(
        "{APP}\n[webhook]\nlisten = \"127.0.0.1:18082\"\ngithub_secret_env = \"GH_SECRET\"\n"
    );
    assert_refused_at(
        &text,
        8,
        "ports.green = 18082 is the port of [webhook] listen",
    );
}

#[test]
fn a_docker_host_port_equal_to_the_proxy_port_is_refused() {
    let text = "[proxy]\nlisten = [\"127.0.0.1:9001\"]\n[[app]]\nname = \"web\"\n[app.docker]\nimage = \"web:{version}\"\nnetwork = \"host\"\nhost_ports = { blue = 9001, green = 9002 }\n";
    assert_refused_at(
        text,
        8,
        "host_ports.blue = 9001 is the port of [proxy] listen",
    );
}

#[test]
fn a_webhook_listen_equal_to_a_proxy_listen_is_refused() {
    let text = format!(
        "[proxy]\nlisten = [\"127.0.0.1:9000\"]\n{APP}\n[webhook]\nlisten = \"127.0.0.1:9000\"\ngithub_secret_env = \"GH_SECRET\"\n"
    );
    assert_refused_at(
        &text,
        13,
        "uses the port of [proxy] listen `127.0.0.1:9000`",
    );
}

#[test]
fn a_webhook_on_a_wildcard_address_clashes_with_a_proxy_port() {
    let text = format!(
        "[proxy]\nlisten = [\"127.0.0.1:9000\"]\n{APP}\n[webhook]\nlisten = \"0.0.0.0:9000\"\ngithub_secret_env = \"GH_SECRET\"\n"
    );
    assert_refused_at(&text, 13, "needs a port of its own");
}

#[test]
fn listeners_on_port_zero_never_clash() {
    let text = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n{APP}\n[webhook]\nlisten = \"127.0.0.1:0\"\ngithub_secret_env = \"GH_SECRET\"\n"
    );
    Config::parse(Path::new("/srv/cutover.toml"), &text).expect("port 0 picks a free port");
}

#[test]
fn a_duplicate_listen_entry_is_refused() {
    let text = format!("[proxy]\nlisten = [\"127.0.0.1:9000\",\n  \"127.0.0.1:9000\"]\n{APP}");
    assert_refused_at(
        &text,
        3,
        "`127.0.0.1:9000` is listed twice in [proxy] listen",
    );
}

#[test]
fn a_tls_listen_on_the_port_of_a_listen_is_refused() {
    let text = format!(
        "[proxy]\nlisten = [\"0.0.0.0:8443\"]\ntls_listen = [\"0.0.0.0:8443\"]\n[[proxy.tls]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{APP}"
    );
    assert_refused_at(
        &text,
        3,
        "tls_listen `0.0.0.0:8443` uses the port of [proxy] listen",
    );
}

#[test]
fn an_empty_listen_list_is_refused() {
    let text = format!("[proxy]\nlisten = []\n{APP}");
    assert_refused_at(
        &text,
        2,
        "`listen = []` leaves the proxy without a listener",
    );
}

#[test]
fn a_nul_in_a_health_path_is_refused() {
    let text = APP.replace("\"/health\"", "\"/hea\\u0000lth\"");
    assert_refused_at(&text, 5, "health path");
    assert!(error_of(&text).contains("control character"));
}

#[test]
fn a_space_in_a_health_path_is_refused() {
    let text = APP.replace("\"/health\"", "\"/he alth\"");
    assert_refused_at(&text, 5, "percent-encode it");
}

#[test]
fn a_nul_in_an_env_value_is_refused() {
    let text = format!("{APP}[app.process.env]\nTOKEN = \"a\\u0000b\"\n");
    assert_refused_at(
        &text,
        9,
        "the value of environment variable `TOKEN` contains a NUL",
    );
}

#[test]
fn an_env_key_with_an_equals_sign_is_refused() {
    let text = format!("{APP}[app.process.env]\n\"A=B\" = \"1\"\n");
    assert_refused_at(&text, 9, "environment variable name \"A=B\" contains `=`");
}

#[test]
fn an_empty_env_key_is_refused() {
    let text = format!("{APP}[app.process.env]\n\"\" = \"1\"\n");
    assert_refused_at(&text, 9, "an environment variable name is empty");
}

#[test]
fn a_docker_env_value_with_a_nul_is_refused() {
    let text = "[[app]]\nname = \"web\"\n[app.docker]\nimage = \"web:{version}\"\nenv = { TOKEN = \"a\\u0000b\" }\n";
    assert_refused_at(
        text,
        3,
        "the value of environment variable `TOKEN` contains a NUL",
    );
}

#[test]
fn a_nul_in_a_command_argument_is_refused() {
    let text = APP.replace("\"{port}\"", "\"{port}\\u0000\"");
    assert_refused_at(&text, 7, "NUL character");
}

#[test]
fn a_deeply_nested_table_is_refused_with_a_location() {
    let deep = vec!["a"; 3000].join(".");
    let text = format!("{APP}\n[{deep}]\n");
    assert_refused_at(&text, 10, "nest too deeply");
}

#[test]
fn a_deeply_nested_value_is_refused_with_a_location() {
    let text = format!("{APP}\nx = {}{}\n", "[".repeat(400), "]".repeat(400));
    assert_refused_at(&text, 10, "recursion");
}

#[test]
fn a_missing_secret_file_is_refused_when_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cutover.toml");
    let text = "[webhook]\nlisten = \"127.0.0.1:0\"\ngithub_secret_file = \"secrets/gh\"\n";
    std::fs::write(&path, text).expect("write config");
    let error = Config::load_checked(&path)
        .expect_err("a missing secret file must be refused")
        .to_string();
    assert!(
        error.starts_with(&format!("{}:3:", path.display())),
        "{error}"
    );
    assert!(
        error.contains("secret file `secrets/gh` does not exist"),
        "{error}"
    );
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    std::fs::write(dir.path().join("secrets/gh"), "s3cret\n").expect("write secret");
    Config::load_checked(&path).expect("the secret file exists now");
}

#[test]
fn an_endless_config_file_is_refused_without_reading_it_all() {
    let error = Config::load(Path::new("/dev/zero"))
        .expect_err("/dev/zero is no configuration")
        .to_string();
    assert!(error.starts_with("/dev/zero: "), "{error}");
    assert!(
        error.contains(&format!("larger than {} MiB", MAX_CONFIG_BYTES >> 20)),
        "{error}"
    );
}

#[test]
fn a_binary_config_file_is_refused_as_not_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, [0xff, 0xfe, 0x00]).expect("write");
    let error = Config::load(&path).expect_err("not UTF-8").to_string();
    assert!(error.contains("not UTF-8"), "{error}");
}
