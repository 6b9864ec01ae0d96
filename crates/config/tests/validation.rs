//! Invariant 8 for configuration: bad input gets an error naming file, line and problem.

use cutover_config::{Config, DriverConfig, Slot};
use std::path::Path;
use std::time::Duration;

const GOOD: &str = r#"
state_dir = "state"

[proxy]
listen = ["127.0.0.1:0"]

[[app]]
name = "web"
drain_timeout = "5s"
[app.health]
path = "/ttt"
expect_status = "200-299"
[app.process]
command = ["cutover-testapp", "--port", "{port}", "--version", "{version}"]
ports = { blue = 18081, green = 18082 }
"#;

fn parse(text: &str) -> Result<Config, cutover_config::ConfigError> {
    Config::parse(Path::new("/srv/cutover.toml"), text)
}

#[test]
fn a_good_config_resolves_paths_and_defaults() {
    let config = parse(GOOD).expect("valid config");
    assert_eq!(config.state_dir, Path::new("/srv/state"));
    assert_eq!(config.admin.socket, Path::new("/srv/state/admin.sock"));
    let app = config.app("web").expect("app web");
    assert_eq!(app.hosts, vec!["*"]);
    assert_eq!(app.drain_timeout, Duration::from_secs(5));
    assert_eq!(app.health.expect_status, (200, 299));
    assert_eq!(app.health.deploy_timeout, Duration::from_secs(120));
    let DriverConfig::Process(process) = &app.driver else {
        panic!("web runs with the process driver");
    };
    assert_eq!(process.ports.map(|p| p.of(Slot::Green)), Some(18082));
    assert_eq!(process.working_dir, Path::new("/srv"));
}

fn error_of(text: &str) -> String {
    parse(text)
        .expect_err("config must be rejected")
        .to_string()
}

#[test]
fn unknown_key_is_rejected_with_line_and_column() {
    let text = GOOD.replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\ndrain_timout = \"5s\"",
    );
    let error = error_of(&text);
    assert!(error.starts_with("/srv/cutover.toml:10:1: "), "{error}");
    assert!(error.contains("unknown field `drain_timout`"), "{error}");
}

#[test]
fn wrong_type_is_rejected_with_line_and_column() {
    let error = error_of(&GOOD.replace("drain_timeout = \"5s\"", "drain_timeout = 5"));
    assert!(error.starts_with("/srv/cutover.toml:9:"), "{error}");
    assert!(error.contains("duration"), "{error}");
}

#[test]
fn bad_duration_names_the_units() {
    let error = error_of(&GOOD.replace("\"5s\"", "\"5 fortnights\""));
    assert!(error.contains("/srv/cutover.toml:9:"), "{error}");
    assert!(error.contains("use ms, s, m or h"), "{error}");
}

#[test]
fn duplicate_app_name_is_rejected_at_the_second_one() {
    let second = GOOD
        .split("[[app]]")
        .nth(1)
        .expect("app section")
        .replace("18081", "18091")
        .replace("18082", "18092");
    let text = format!(
        "{GOOD}\n[[app]]{}",
        second.replace("name = \"web\"", "name = \"web\"\nhosts = [\"other\"]")
    );
    let error = error_of(&text);
    assert!(error.contains("duplicate app name `web`"), "{error}");
    assert!(error.starts_with("/srv/cutover.toml:18:"), "{error}");
}

#[test]
fn both_drivers_in_one_app_are_rejected() {
    let error = error_of(&format!(
        "{GOOD}[app.docker]\nimage = \"web:{{version}}\"\n"
    ));
    assert!(
        error.contains("both [app.process] and [app.docker]"),
        "{error}"
    );
    assert!(error.starts_with("/srv/cutover.toml:"), "{error}");
}

#[test]
fn an_app_without_a_driver_is_rejected() {
    let text = "[[app]]\nname = \"web\"\n";
    assert!(error_of(text).contains("has no driver"));
}

#[test]
fn two_apps_claiming_the_default_host_are_rejected() {
    let text = "[[app]]\nname = \"a\"\n[app.process]\ncommand = [\"x\"]\n[[app]]\nname = \"b\"\n[app.process]\ncommand = [\"y\"]\n";
    assert!(error_of(text).contains("host `*` of app `b` is already routed to app `a`"));
}

#[test]
fn same_port_for_both_slots_is_rejected() {
    let error = error_of(&GOOD.replace("green = 18082", "green = 18081"));
    assert!(error.contains("two different non-zero ports"), "{error}");
}

#[test]
fn malformed_toml_is_reported_not_panicked_on() {
    let error = error_of("[[app]\nname = ");
    assert!(error.starts_with("/srv/cutover.toml:1:"), "{error}");
}

#[test]
fn release_safety_settings_parse_and_bad_ones_are_refused() {
    let text = GOOD.replace(
        "drain_timeout = \"5s\"",
        "promotion = \"manual\"\nauto_abort_after = \"1h\"\nkeep_old = \"5m\"\nverify_for = \"2m\"\nverify_max_error_ratio = 0.1\nshift = { steps = [10, 50, 100], every = \"30s\" }\nhooks = { before_switch = [[\"./smoke.sh\"]], timeout = \"10s\" }",
    );
    let config = parse(&text).expect("valid");
    let app = config.app("web").unwrap();
    assert_eq!(app.promotion, cutover_config::Promotion::Manual);
    assert_eq!(app.auto_abort_after, Some(Duration::from_secs(3600)));
    assert_eq!(app.keep_old, Duration::from_secs(300));
    let verify = app.verify.as_ref().unwrap();
    assert_eq!(
        (verify.window, verify.max_error_ratio),
        (Duration::from_secs(120), 0.1)
    );
    assert_eq!(app.shift.as_ref().unwrap().steps, vec![10, 50, 100]);
    assert_eq!(
        app.hooks.before_switch,
        vec![vec!["./smoke.sh".to_string()]]
    );
    assert_eq!(app.hooks.timeout, Duration::from_secs(10));

    let bad_steps = error_of(&GOOD.replace(
        "drain_timeout = \"5s\"",
        "shift = { steps = [50, 10], every = \"30s\" }",
    ));
    assert!(bad_steps.contains("increasing percentages"), "{bad_steps}");
    let bad_ratio = error_of(&GOOD.replace(
        "drain_timeout = \"5s\"",
        "verify_for = \"1m\"\nverify_max_error_ratio = 5.0",
    ));
    assert!(bad_ratio.contains("between 0.0 and 1.0"), "{bad_ratio}");
    let bad_hook =
        error_of(&GOOD.replace("drain_timeout = \"5s\"", "hooks = { after_switch = [[]] }"));
    assert!(bad_hook.contains("argv list"), "{bad_hook}");
}

#[test]
fn proxy_workers_are_one_per_cpu_unless_a_count_is_given() {
    assert_eq!(parse(GOOD).expect("valid").proxy.workers, None);
    let auto = GOOD.replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\nworkers = \"auto\"",
    );
    assert_eq!(parse(&auto).expect("valid").proxy.workers, None);
    let three = GOOD.replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\nworkers = 3",
    );
    assert_eq!(
        parse(&three).expect("valid").proxy.workers.map(|n| n.get()),
        Some(3)
    );
}

#[test]
fn proxy_workers_outside_one_to_the_maximum_are_rejected_at_their_line() {
    for bad in ["0", "-2", "100000", "\"many\"", "2.5"] {
        let text = GOOD.replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:0\"]\nworkers = {bad}"),
        );
        let error = error_of(&text);
        assert!(error.starts_with("/srv/cutover.toml:6:11: "), "{error}");
        assert!(
            error.contains("workers must be a number from 1 to 256 or \"auto\""),
            "{error}"
        );
    }
}

#[test]
fn proxy_io_is_auto_by_default_and_an_unknown_word_is_rejected_at_its_line() {
    use cutover_config::ProxyIo;
    assert_eq!(parse(GOOD).expect("valid").proxy.io, ProxyIo::Auto);
    for (word, io) in [
        ("auto", ProxyIo::Auto),
        ("uring", ProxyIo::Uring),
        ("epoll", ProxyIo::Epoll),
    ] {
        let text = GOOD.replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:0\"]\nio = \"{word}\""),
        );
        assert_eq!(parse(&text).expect("valid").proxy.io, io, "{word}");
    }
    let text = GOOD.replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\nio = \"io_uring\"",
    );
    let error = error_of(&text);
    assert!(error.starts_with("/srv/cutover.toml:6:6: "), "{error}");
    assert!(
        error.contains("io `io_uring` is not known; use \"auto\""),
        "{error}"
    );
}

#[test]
fn trusted_proxies_are_nobody_by_default_and_parse_as_cidr_blocks() {
    assert!(parse(GOOD).expect("valid").proxy.trusted_proxies.is_empty());
    let text = GOOD.replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"fd00::/8\"]",
    );
    let blocks: Vec<String> = parse(&text)
        .expect("valid")
        .proxy
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(blocks, ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]);
}

#[test]
fn a_malformed_trusted_proxy_block_is_rejected_at_its_line() {
    for (bad, why) in [
        ("10.0.0.0/33", "prefix `33` is not a number from 0 to 32"),
        ("proxy.example", "`proxy.example` is not an IP address"),
    ] {
        let text = GOOD.replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:0\"]\ntrusted_proxies = [\"{bad}\"]"),
        );
        let error = error_of(&text);
        assert!(error.starts_with("/srv/cutover.toml:6:"), "{error}");
        assert!(error.contains(why), "{error}");
    }
}

#[test]
fn connection_limits_default_to_derived_and_1024_per_client_and_reject_negatives() {
    let proxy = parse(GOOD).expect("valid").proxy;
    assert_eq!(proxy.max_connections, None, "derived from the fd limit");
    assert_eq!(proxy.max_connections_per_client, 1024);
    let text = GOOD.replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\nmax_connections = 50\nmax_connections_per_client = 0",
    );
    let proxy = parse(&text).expect("valid").proxy;
    assert_eq!(proxy.max_connections, Some(50));
    assert_eq!(proxy.max_connections_per_client, 0, "0: unlimited");
    for bad in ["max_connections = 0", "max_connections_per_client = -1"] {
        let text = GOOD.replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:0\"]\n{bad}"),
        );
        let error = error_of(&text);
        assert!(error.starts_with("/srv/cutover.toml:6:"), "{error}");
        assert!(
            error.contains("must be a whole number of at least"),
            "{error}"
        );
    }
}
