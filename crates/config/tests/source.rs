//! `[app.source]` and `[webhook]`: defaults, paths, and errors that name
//! the place and the problem.

use cutover_config::docker::SecretSource;
use cutover_config::{Config, RefKind};
use std::path::{Path, PathBuf};
use std::time::Duration;

const APP: &str = r#"
state_dir = "state"

[[app]]
name = "web"
[app.process]
command = ["java", "-jar", "{artifact}", "--server.port={port}"]
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
fn a_source_and_a_webhook_resolve_with_defaults() {
    let text = format!(
        r#"{APP}
[app.source]
repo = "repos/web.git"
deploy_on = {{ branches = ["main"], tags = ["*cicd*"] }}
build = [["./gradlew", "bootJar"]]
artifact = "build/libs/*.jar"
env = {{ JAVA_HOME = "/usr/lib/jvm/default" }}
secret_env_files = {{ NPM_TOKEN = "secrets/npm" }}

[webhook]
listen = "127.0.0.1:9000"
github_secret_file = ["secrets/gh-old", "secrets/gh-new"]
gitlab_token_env = "GITLAB_TOKEN"
"#
    );
    let config = parse(&text).expect("valid");
    let source = config.app("web").unwrap().source.as_ref().unwrap();
    assert_eq!(source.repo, "/srv/repos/web.git");
    assert_eq!(source.workspace, Path::new("/srv/state/workspaces/web"));
    assert_eq!(source.artifacts_dir, Path::new("/srv/state/artifacts/web"));
    assert_eq!(source.build, vec![vec!["./gradlew", "bootJar"]]);
    assert_eq!(source.artifact.as_deref(), Some("build/libs/*.jar"));
    assert_eq!(source.build_timeout, Duration::from_secs(30 * 60));
    assert_eq!(source.fetch_timeout, Duration::from_secs(5 * 60));
    assert!(source.deploy_on.matches(RefKind::Tag, "v1-cicd"));
    assert!(!source.deploy_on.matches(RefKind::Branch, "v1-cicd"));
    assert_eq!(
        source.secret_env.get("NPM_TOKEN"),
        Some(&SecretSource::File(PathBuf::from("/srv/secrets/npm")))
    );

    let webhook = config.webhook.as_ref().unwrap();
    assert_eq!(webhook.listen.unwrap().to_string(), "127.0.0.1:9000");
    assert_eq!(webhook.path_prefix, "/_cutover/hooks");
    assert_eq!(webhook.max_body, 25 << 20);
    assert_eq!(webhook.read_timeout, Duration::from_secs(10));
    assert_eq!(
        webhook.github,
        vec![
            SecretSource::File(PathBuf::from("/srv/secrets/gh-old")),
            SecretSource::File(PathBuf::from("/srv/secrets/gh-new")),
        ]
    );
    assert_eq!(
        webhook.gitlab,
        vec![SecretSource::Env("GITLAB_TOKEN".into())]
    );
    assert!(webhook.gitea.is_empty() && webhook.bitbucket.is_empty());
}

#[test]
fn bad_sources_are_refused_with_line_and_column() {
    for (source, expect) in [
        (
            "repo = \"ext::sh -c touch% /tmp/x\"",
            "not a repository git may fetch",
        ),
        (
            "repo = \"--upload-pack=touch:x\"",
            "not a repository git may fetch",
        ),
        ("repo = \"ftp://host/x\"", "not a repository git may fetch"),
        (
            "repo = \"/r.git\"\nartifact = \"../outside/*.jar\"",
            "inside the checkout",
        ),
        (
            "repo = \"/r.git\"\nartifact = \"/abs/*.jar\"",
            "inside the checkout",
        ),
        (
            "repo = \"/r.git\"\nbuild = [[]]",
            "argv list naming a program",
        ),
        (
            "repo = \"/r.git\"\nenv = { CUTOVER_COMMIT = \"x\" }",
            "not allowed",
        ),
        (
            "repo = \"/r.git\"\ndeploy_on = { tags = [\"\"] }",
            "must not be empty",
        ),
        (
            "repo = \"/r.git\"\nbuild_timeout = \"0s\"",
            "longer than 0s",
        ),
        (
            "repo = \"/r.git\"\nbranch = \"main\"",
            "unknown field `branch`",
        ),
    ] {
        let message = error_of(&format!("{APP}\n[app.source]\n{source}\n"));
        assert!(message.contains(expect), "{source}: {message}");
        assert!(message.starts_with("/srv/cutover.toml:"), "{message}");
    }
}

#[test]
fn bad_webhooks_are_refused() {
    for (webhook, expect) in [
        // Without `listen` the receiver is on the proxy's listeners, under
        // a prefix that must not take every path from the apps.
        (
            "github_secret_file = \"s\"\npath_prefix = \"\"",
            "path_prefix is empty",
        ),
        ("listen = \"127.0.0.1:9000\"", "has no secret"),
        ("listen = \"localhost\"\ngithub_secret_file = \"s\"", "not a listen address"),
        (
            "listen = \"127.0.0.1:9000\"\ngithub_secret_file = [\"a\", \"b\"]\ngithub_secret_env = \"C\"",
            "at most two",
        ),
        (
            "listen = \"127.0.0.1:9000\"\ngithub_secret_file = \"s\"\npath_prefix = \"hooks\"",
            "path_prefix",
        ),
        (
            "listen = \"127.0.0.1:9000\"\ngithub_secret_env = \"NOT A NAME\"",
            "not an environment variable name",
        ),
        (
            "listen = \"127.0.0.1:9000\"\ngithub_secret = \"inline\"",
            "unknown field `github_secret`",
        ),
    ] {
        let message = error_of(&format!("{APP}\n[webhook]\n{webhook}\n"));
        assert!(message.contains(expect), "{webhook}: {message}");
    }
}
