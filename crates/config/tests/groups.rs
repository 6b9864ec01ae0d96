//! `[[group]]` and `[[app]] paths`: what is accepted, and every refusal
//! located at its line with a message that says what to change.

use cutover_config::{Config, ConfigError, GroupConfig};
use std::path::Path;

fn app(name: &str, extra: &str) -> String {
    format!("\n[[app]]\nname = \"{name}\"\n{extra}\n[app.process]\ncommand = [\"./{name}\"]\n")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/srv/cutover.toml"), text)
}

/// The error of `text`: its line and message.
fn refused(text: &str) -> (usize, String) {
    let error = parse(text).expect_err("refused");
    let (line, _) = error.position.expect("located");
    (line, error.message)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .map(|i| i + 1)
        .expect("needle")
}

#[test]
fn a_group_and_path_prefixes_are_read_with_trailing_slashes_dropped() {
    let text = format!(
        "{}{}\n[[group]]\nname = \"shop\"\napps = [\"web\", \"api\"]\n",
        app("web", ""),
        app("api", "paths = [\"/api/\", \"/v2\"]"),
    );
    let config = parse(&text).expect("valid");
    assert_eq!(
        config.groups,
        vec![GroupConfig {
            name: "shop".into(),
            apps: vec!["web".into(), "api".into()],
        }]
    );
    assert_eq!(
        config.group_of("api").map(|g| g.name.as_str()),
        Some("shop")
    );
    assert!(config.group("web").is_none());
    assert_eq!(config.app("web").expect("web").paths, ["/"]);
    assert_eq!(config.app("api").expect("api").paths, ["/api", "/v2"]);
}

#[test]
fn two_apps_share_a_host_only_on_different_paths() {
    let ok = format!("{}{}", app("web", ""), app("api", "paths = [\"/api\"]"));
    assert!(parse(&ok).is_ok());
    let clash = format!(
        "{}{}",
        app("web", "paths = [\"/api\"]"),
        app("api", "paths = [\"/api/\"]")
    );
    let (line, message) = refused(&clash);
    assert_eq!(line, line_of(&clash, "name = \"api\""));
    assert!(
        message.contains("host `*` with path `/api` of app `api` is already routed to app `web`"),
        "{message}"
    );
}

#[test]
fn bad_path_prefixes_are_refused_where_they_are_written() {
    for bad in ["\"api\"", "\"/a b\"", "\"/api?x=1\"", "\"/#top\""] {
        let text = app("web", &format!("paths = [{bad}]"));
        let (line, message) = refused(&text);
        assert_eq!(line, line_of(&text, "paths"), "{bad}");
        assert!(message.contains("is not a path prefix"), "{bad}: {message}");
    }
    let empty = app("web", "paths = []");
    assert!(refused(&empty).1.contains("empty `paths` list"));
    let twice = app("web", "paths = [\"/a\", \"/a/\"]");
    assert!(refused(&twice).1.contains("lists the path `/a` twice"));
}

#[test]
fn a_group_naming_an_unknown_app_is_refused_at_that_name() {
    let text = format!(
        "{}\n[[group]]\nname = \"shop\"\napps = [\"web\",\n  \"db\"]\n",
        app("web", "")
    );
    let (line, message) = refused(&text);
    assert_eq!(line, line_of(&text, "\"db\""));
    assert!(
        message.contains("names `db`, which is not an app"),
        "{message}"
    );
}

#[test]
fn an_app_in_two_groups_is_refused() {
    let text = format!(
        "{}{}\n[[group]]\nname = \"a\"\napps = [\"web\"]\n\n[[group]]\nname = \"b\"\napps = [\"api\", \"web\"]\n",
        app("web", ""),
        app("api", "hosts = [\"api.test\"]"),
    );
    let (line, message) = refused(&text);
    assert_eq!(line, line_of(&text, "apps = [\"api\", \"web\"]"));
    assert!(
        message.contains("app `web` is in group `a` already"),
        "{message}"
    );
}

#[test]
fn a_group_named_like_an_app_or_another_group_is_refused() {
    let clash = format!(
        "{}\n[[group]]\nname = \"web\"\napps = [\"web\"]\n",
        app("web", "")
    );
    let (line, message) = refused(&clash);
    assert_eq!(line, line_of(&clash, "[[group]]") + 1);
    assert!(message.contains("has the name of an app"), "{message}");
    let twice = format!(
        "{}{}\n[[group]]\nname = \"g\"\napps = [\"web\"]\n[[group]]\nname = \"g\"\napps = [\"api\"]\n",
        app("web", ""),
        app("api", "hosts = [\"api.test\"]"),
    );
    assert!(refused(&twice).1.contains("duplicate group name `g`"));
    let bad = format!(
        "{}\n[[group]]\nname = \"Shop\"\napps = [\"web\"]\n",
        app("web", "")
    );
    assert!(refused(&bad).1.contains("group name `Shop` is not valid"));
    let empty = format!("{}\n[[group]]\nname = \"g\"\napps = []\n", app("web", ""));
    assert!(refused(&empty).1.contains("has no apps"));
}

#[test]
fn a_member_with_shift_is_refused_since_a_group_switches_at_once() {
    let text = format!(
        "{}\n[app.shift]\nsteps = [10, 100]\nevery = \"10s\"\n\n[[group]]\nname = \"g\"\napps = [\"web\"]\n",
        app("web", "")
    );
    let message = refused(&text).1;
    assert!(
        message.contains("sets `shift`, but a group switches all of its apps at once"),
        "{message}"
    );
}

#[test]
fn groups_and_paths_need_the_built_in_proxy() {
    let nginx = "[proxy]\nmode = \"nginx\"\n";
    let group = format!(
        "{nginx}{}\n[[group]]\nname = \"g\"\napps = [\"web\"]\n",
        app("web", "")
    );
    let (line, message) = refused(&group);
    assert_eq!(line, line_of(&group, "[[group]]"));
    assert!(
        message.contains("[[group]] needs the built-in proxy"),
        "{message}"
    );
    let paths = format!("{nginx}{}", app("web", "paths = [\"/api\"]"));
    let message = refused(&paths).1;
    assert!(
        message.contains("sets `paths`, which needs the built-in proxy"),
        "{message}"
    );
}
