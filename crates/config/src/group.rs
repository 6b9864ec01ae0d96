//! Release groups (`[[group]] name, apps`): apps switched as one, and the
//! path prefixes (`[[app]] paths`) that let two apps share a host.
//!
//! Refused here because they would fail at run time: a member that is not
//! an app, an app in two groups, a group named like an app (`cutover deploy
//! NAME` must mean one thing), a member with `shift` (a group switches all
//! of its apps at once) and groups with the nginx front (whose switch is one
//! reload per app).

use crate::error::{ConfigError, Located};
use crate::model::AppConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

/// `[[group]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: Spanned<String>,
    pub apps: Spanned<Vec<Spanned<String>>>,
}

/// A release group: its apps are deployed together and switched in one
/// route-table swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    /// Member apps, as listed.
    pub apps: Vec<String>,
}

/// What the group checks need to know about the apps.
pub(crate) struct AppFacts<'a> {
    pub apps: &'a [AppConfig],
    /// The span of each app's `shift`, if set.
    pub shifts: BTreeMap<&'a str, std::ops::Range<usize>>,
    pub nginx: bool,
}

pub(crate) fn validate(
    raw: &[Spanned<RawGroup>],
    facts: &AppFacts<'_>,
    file: &Path,
    text: &str,
) -> Result<Vec<GroupConfig>, ConfigError> {
    groups(raw, facts).map_err(|located| ConfigError::located(file, text, located))
}

fn groups(raw: &[Spanned<RawGroup>], facts: &AppFacts<'_>) -> Result<Vec<GroupConfig>, Located> {
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut groups = Vec::with_capacity(raw.len());
    for spanned in raw {
        if facts.nginx {
            return Err((spanned.span(), "[[group]] needs the built-in proxy: with `[proxy] mode = \"nginx\"` each app switches with its own reload, so a group could not switch as one; remove the group or the nginx mode".to_string()));
        }
        let group = spanned.get_ref();
        let name = group_name(&group.name, facts, &names)?;
        let apps = members(group, facts, &mut owner)?;
        names.push(name.clone());
        groups.push(GroupConfig { name, apps });
    }
    Ok(groups)
}

fn group_name(
    raw: &Spanned<String>,
    facts: &AppFacts<'_>,
    taken: &[String],
) -> Result<String, Located> {
    let name = raw.get_ref();
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err((raw.span(), format!("group name `{name}` is not valid: use 1-63 lowercase letters, digits, `-` or `_`, not starting with `-`")));
    }
    if facts.apps.iter().any(|app| &app.name == name) {
        return Err((raw.span(), format!("group `{name}` has the name of an app; `cutover deploy {name}` must mean one thing: rename the group")));
    }
    if taken.contains(name) {
        return Err((
            raw.span(),
            format!("duplicate group name `{name}`: every [[group]] needs its own name"),
        ));
    }
    Ok(name.clone())
}

/// The group's apps: known, listed once, in no other group, without `shift`.
fn members(
    group: &RawGroup,
    facts: &AppFacts<'_>,
    owner: &mut BTreeMap<String, String>,
) -> Result<Vec<String>, Located> {
    let name = group.name.get_ref();
    if group.apps.get_ref().is_empty() {
        return Err((
            group.apps.span(),
            format!("group `{name}` has no apps; list the apps it switches together"),
        ));
    }
    let mut apps = Vec::new();
    for app in group.apps.get_ref() {
        let member = app.get_ref();
        if !facts.apps.iter().any(|a| &a.name == member) {
            return Err((
                app.span(),
                format!("group `{name}` names `{member}`, which is not an app: define it with [[app]] name = \"{member}\""),
            ));
        }
        if apps.contains(member) {
            return Err((app.span(), format!("group `{name}` lists `{member}` twice")));
        }
        if let Some(other) = owner.insert(member.clone(), name.clone()) {
            return Err((app.span(), format!("app `{member}` is in group `{other}` already; an app belongs to one group at most")));
        }
        if facts.shifts.contains_key(member.as_str()) {
            return Err((app.span(), format!("app `{member}` of group `{name}` sets `shift`, but a group switches all of its apps at once; remove `shift` from `{member}`")));
        }
        apps.push(member.clone());
    }
    Ok(apps)
}

/// `[[app]] paths`: prefixes starting with `/`, without query, fragment,
/// whitespace or control characters; a trailing `/` is dropped (`/api/`
/// is `/api`, which covers `/api` and everything below it). Not given:
/// `["/"]`, every path.
pub(crate) fn paths(
    app: &str,
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
) -> Result<Vec<String>, Located> {
    let Some(raw) = raw else {
        return Ok(vec!["/".to_string()]);
    };
    if raw.get_ref().is_empty() {
        return Err((
            raw.span(),
            format!("app `{app}` has an empty `paths` list; omit it or use [\"/\"]"),
        ));
    }
    let mut paths: Vec<String> = Vec::new();
    for path in raw.get_ref() {
        let text = path.get_ref();
        let bad = !text.starts_with('/')
            || text
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#');
        if bad {
            return Err((path.span(), format!("`{text}` is not a path prefix: start it with `/`, without spaces, `?` or `#` (e.g. \"/api\")")));
        }
        let trimmed = match text.trim_end_matches('/') {
            "" => "/".to_string(),
            trimmed => trimmed.to_string(),
        };
        if paths.contains(&trimmed) {
            return Err((
                path.span(),
                format!("app `{app}` lists the path `{trimmed}` twice"),
            ));
        }
        paths.push(trimmed);
    }
    Ok(paths)
}
