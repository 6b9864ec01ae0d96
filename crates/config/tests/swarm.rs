//! `[app.swarm]`, `[app] balance` and `advertise`: good sections parse, bad
//! ones are refused at their line and column with what to do.

use cutover_config::{Balance, Config, DriverConfig};
use std::net::IpAddr;
use std::path::Path;

fn parse(text: &str) -> Result<Config, cutover_config::ConfigError> {
    Config::parse(Path::new("/srv/cutover.toml"), text)
}

fn swarm_app(app_keys: &str, swarm_keys: &str) -> String {
    format!("[[app]]\nname = \"web\"\n{app_keys}\n[app.swarm]\nimage = \"web:{{version}}\"\n{swarm_keys}\n")
}

fn refusal(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("accepted: {:?}", config.apps),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_swarm_app_parses_with_its_balance() {
    let config = parse(&swarm_app(
        "balance = \"round_robin\"",
        "replicas = 2\nconstraints = [\"node.role == manager\"]",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let app = &config.apps[0];
    assert_eq!(app.balance, Balance::RoundRobin);
    let DriverConfig::Swarm(swarm) = &app.driver else {
        panic!("not a swarm app: {:?}", app.driver);
    };
    assert_eq!(swarm.replicas, 2);
    assert_eq!(app.driver.advertise(), None);
    let default = parse(&swarm_app("", "")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(default.apps[0].balance, Balance::LeastRequests);
}

#[test]
fn bad_swarm_sections_are_refused_at_their_place() {
    for (app_keys, swarm_keys, line_col, expected) in [
        (
            "",
            "replicas = 0",
            "6:12",
            "replicas = 0 is not a task count",
        ),
        ("", "replicas = 5000", "6:12", "1 to 1000 tasks"),
        ("", "port = 70000", "6:8", "is not a port"),
        (
            "",
            "constraints = [\"node.role\"]",
            "6:15",
            "not ATTRIBUTE == VALUE",
        ),
        (
            "",
            "networks = [\"a b\"]",
            "6:12",
            "not a Docker network name",
        ),
        (
            "",
            "labels = { \"cutover.app\" = \"x\" }",
            "6:10",
            "set by cutover itself",
        ),
        ("", "push = true", "6:8", "needs a `build`"),
        ("", "restart = \"always\"", "6:1", "unknown field `restart`"),
        (
            "balance = \"random\"",
            "",
            "3:11",
            "balance `random` is not known",
        ),
    ] {
        let error = refusal(&swarm_app(app_keys, swarm_keys));
        assert!(
            error.starts_with(&format!("/srv/cutover.toml:{line_col}: ")),
            "{swarm_keys}{app_keys}: {error}"
        );
        assert!(error.contains(expected), "{swarm_keys}{app_keys}: {error}");
    }
    let image = refusal("[[app]]\nname = \"web\"\n[app.swarm]\nimage = \"web:latest\"\n");
    assert!(image.contains("must contain {version}"), "{image}");
}

#[test]
fn two_drivers_are_refused_at_the_second_section() {
    let text = "[[app]]\nname = \"web\"\n[app.docker]\nimage = \"web:{version}\"\n[app.swarm]\nimage = \"web:{version}\"\n";
    let error = refusal(text);
    assert!(error.starts_with("/srv/cutover.toml:5:1: "), "{error}");
    assert!(
        error.contains("both [app.docker] and [app.swarm]"),
        "{error}"
    );
}

#[test]
fn advertise_is_an_ip_address_of_a_local_release() {
    let process =
        "[[app]]\nname = \"web\"\n[app.process]\ncommand = [\"x\"]\nadvertise = \"127.0.0.2\"\n";
    let config = parse(process).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.apps[0].driver.advertise(),
        "127.0.0.2".parse::<IpAddr>().ok()
    );
    let docker = "[[app]]\nname = \"web\"\n[app.docker]\nimage = \"web:{version}\"\nadvertise = \"10.0.0.5\"\n";
    let config = parse(docker).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.apps[0].driver.advertise(),
        "10.0.0.5".parse::<IpAddr>().ok()
    );
    for bad in ["web.internal", "0.0.0.0", "10.0.0.5:80"] {
        let error = refusal(&process.replace("127.0.0.2", bad));
        assert!(error.starts_with("/srv/cutover.toml:5:13: "), "{error}");
        assert!(error.contains("is not an IP address"), "{error}");
    }
    let on_swarm = refusal(&swarm_app("", "advertise = \"10.0.0.5\""));
    assert!(on_swarm.contains("unknown field `advertise`"), "{on_swarm}");
}
