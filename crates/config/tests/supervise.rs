//! `[[app]] restart`, `restart_limit`, `restart_window`, `restart_backoff`,
//! `restart_backoff_max` and `on_live_failure`: defaults, and bad values
//! refused with their location.

use cutover_config::{Config, OnLiveFailure, RestartPolicy};
use std::path::Path;
use std::time::Duration;

fn app(keys: &str) -> String {
    format!("[[app]]\nname = \"web\"\n{keys}\n[app.process]\ncommand = [\"app\", \"{{port}}\"]\n")
}

fn error_of(keys: &str) -> String {
    Config::parse(Path::new("/srv/cutover.toml"), &app(keys))
        .expect_err("config must be refused")
        .to_string()
}

#[test]
fn supervision_defaults_to_restarting_on_failure_with_backoff() {
    let config = Config::parse(Path::new("/srv/cutover.toml"), &app("")).unwrap();
    let supervise = &config.apps[0].supervise;
    assert_eq!(supervise.restart, RestartPolicy::OnFailure);
    assert_eq!(supervise.on_live_failure, OnLiveFailure::Restart);
    assert_eq!(supervise.limit, 5);
    assert_eq!(supervise.window, Duration::from_secs(300));
    assert_eq!(supervise.delay(1), Duration::from_secs(1));
    assert_eq!(supervise.delay(10), Duration::from_secs(30));
}

#[test]
fn supervision_keys_are_read() {
    let keys = "restart = \"never\"\nrestart_limit = 3\nrestart_window = \"1m\"\nrestart_backoff = \"200ms\"\nrestart_backoff_max = \"2s\"\non_live_failure = \"standby\"";
    let config = Config::parse(Path::new("/srv/cutover.toml"), &app(keys)).unwrap();
    let supervise = &config.apps[0].supervise;
    assert_eq!(supervise.restart, RestartPolicy::Never);
    assert_eq!(supervise.on_live_failure, OnLiveFailure::Standby);
    assert_eq!(supervise.limit, 3);
    assert_eq!(supervise.window, Duration::from_secs(60));
    assert_eq!(supervise.delay(2), Duration::from_millis(400));
}

#[test]
fn bad_supervision_values_are_refused_with_their_location() {
    for (keys, line, problem) in [
        ("restart = \"always\"", 3, "restart `always` is not known"),
        (
            "on_live_failure = \"pray\"",
            3,
            "on_live_failure `pray` is not known",
        ),
        (
            "restart_limit = 0",
            3,
            "restart_limit must be between 1 and 1000",
        ),
        (
            "restart_window = \"0s\"",
            3,
            "restart_window must be more than 0s",
        ),
        (
            "restart_backoff = \"5s\"\nrestart_backoff_max = \"1s\"",
            4,
            "shorter than restart_backoff",
        ),
    ] {
        let error = error_of(keys);
        assert!(
            error.starts_with(&format!("/srv/cutover.toml:{line}:")),
            "{keys}: must be located on line {line}: {error}"
        );
        assert!(
            error.contains(problem),
            "{keys}: must say `{problem}`: {error}"
        );
    }
}
