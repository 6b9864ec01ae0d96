//! The providers, their headers, and the normalisation of their push events
//! into one shape ([`PushEvent`]). Parsing never panics: payloads are read
//! as JSON values and every field is optional until checked.

use cutover_config::RefKind;
use http::HeaderMap;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    GitHub,
    GitLab,
    /// Gitea and Forgejo (and Gogs-style headers).
    Gitea,
    /// Bitbucket Cloud and Bitbucket Data Center (Server).
    Bitbucket,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::GitHub,
        Provider::GitLab,
        Provider::Gitea,
        Provider::Bitbucket,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
        }
    }

    pub fn from_segment(segment: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == segment)
    }

    /// The event name as the provider's header gives it.
    pub fn event(self, headers: &HeaderMap) -> Option<String> {
        let names: &[&str] = match self {
            Provider::GitHub => &["x-github-event"],
            Provider::GitLab => &["x-gitlab-event"],
            Provider::Gitea => &["x-forgejo-event", "x-gitea-event", "x-gogs-event"],
            Provider::Bitbucket => &["x-event-key"],
        };
        first_header(headers, names)
    }

    /// The provider's id of this delivery (the same on a redelivery).
    pub fn delivery(self, headers: &HeaderMap) -> Option<String> {
        let names: &[&str] = match self {
            Provider::GitHub => &["x-github-delivery"],
            // Idempotency-Key stays the same across GitLab's retries.
            Provider::GitLab => &["idempotency-key", "x-gitlab-event-uuid"],
            Provider::Gitea => &["x-forgejo-delivery", "x-gitea-delivery", "x-gogs-delivery"],
            Provider::Bitbucket => &["x-request-uuid", "x-request-id"],
        };
        first_header(headers, names)
    }
}

fn first_header(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    })
}

/// The repository an event is about, as the provider names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repository {
    /// `owner/name` (GitLab: `group/sub/project`; Bitbucket DC: `PROJECT/slug`).
    pub full_name: Option<String>,
    /// Clone and web URLs, to match against `[app.source] repo`.
    pub urls: Vec<String>,
}

impl Repository {
    pub fn describe(&self) -> String {
        self.full_name
            .clone()
            .or_else(|| self.urls.first().cloned())
            .unwrap_or_else(|| "an unnamed repository".to_string())
    }
}

/// One ref update, the same for every provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    pub provider: Provider,
    pub repository: Repository,
    /// `None` for refs that are neither branches nor tags (`refs/notes/…`).
    pub kind: Option<RefKind>,
    /// The ref's name (`main`, `v1.2-cicd`), or the full ref when `kind` is `None`.
    pub name: String,
    /// The commit the ref points at now (an annotated tag's commit where the
    /// provider says it); `None` when the ref was deleted.
    pub commit: Option<String>,
    pub deleted: bool,
}

impl PushEvent {
    pub fn full_ref(&self) -> String {
        match self.kind {
            Some(kind) => kind.full_ref(&self.name),
            None => self.name.clone(),
        }
    }
}

/// What a verified delivery amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized {
    /// A ping or connection test.
    Ping,
    /// Ref updates (Bitbucket may carry several in one delivery).
    Pushes(Vec<PushEvent>),
    /// An event cutover does not act on, and why.
    Ignored(String),
}

/// Normalises a verified delivery. `Err` when a push event's payload lacks
/// what every push has (the body is not what the provider sends).
pub fn normalize(provider: Provider, event: &str, body: &Value) -> Result<Normalized, String> {
    match provider {
        Provider::GitHub => match event {
            "ping" => Ok(Normalized::Ping),
            "push" => github_style(provider, body).map(|p| Normalized::Pushes(vec![p])),
            other => Ok(ignored_event(provider, other)),
        },
        Provider::Gitea => match event {
            "push" => github_style(provider, body).map(|p| Normalized::Pushes(vec![p])),
            other => Ok(ignored_event(provider, other)),
        },
        Provider::GitLab => {
            let kind = body
                .get("object_kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            match (event, kind) {
                ("Push Hook" | "Tag Push Hook" | "System Hook", "push" | "tag_push") => {
                    gitlab(body).map(|p| Normalized::Pushes(vec![p]))
                }
                _ => Ok(ignored_event(provider, event)),
            }
        }
        Provider::Bitbucket => match event {
            "diagnostics:ping" => Ok(Normalized::Ping),
            "repo:push" => bitbucket_cloud(body).map(Normalized::Pushes),
            "repo:refs_changed" => bitbucket_dc(body).map(Normalized::Pushes),
            other => Ok(ignored_event(provider, other)),
        },
    }
}

fn ignored_event(provider: Provider, event: &str) -> Normalized {
    Normalized::Ignored(format!(
        "{} event `{}` does not deploy anything (only pushes of branches and tags do)",
        provider.as_str(),
        event.escape_debug()
    ))
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut current = value;
    for key in path {
        current = current.get(*key)?;
    }
    current.as_str().filter(|s| !s.is_empty())
}

fn is_zero(sha: &str) -> bool {
    !sha.is_empty() && sha.chars().all(|c| c == '0')
}

fn split(full_ref: &str) -> (Option<RefKind>, String) {
    match RefKind::split(full_ref) {
        Some((kind, name)) => (Some(kind), name.to_string()),
        None => (None, full_ref.to_string()),
    }
}

fn urls(value: &Value, paths: &[&[&str]]) -> Vec<String> {
    let mut found = Vec::new();
    for path in paths {
        if let Some(url) = text(value, path) {
            if !found.iter().any(|u| u == url) {
                found.push(url.to_string());
            }
        }
    }
    found
}

/// GitHub and Gitea/Forgejo push payloads (Gitea copied GitHub's shape).
fn github_style(provider: Provider, body: &Value) -> Result<PushEvent, String> {
    let full_ref = text(body, &["ref"]).ok_or("the push payload has no `ref`")?;
    let after = text(body, &["after"]).unwrap_or("");
    let deleted = body
        .get("deleted")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || is_zero(after);
    // For an annotated tag `after` is the tag object; head_commit is the commit.
    let commit = text(body, &["head_commit", "id"])
        .or(Some(after).filter(|a| !a.is_empty()))
        .map(str::to_string);
    let (kind, name) = split(full_ref);
    Ok(PushEvent {
        provider,
        repository: Repository {
            full_name: text(body, &["repository", "full_name"]).map(str::to_string),
            urls: urls(
                body,
                &[
                    &["repository", "clone_url"],
                    &["repository", "ssh_url"],
                    &["repository", "html_url"],
                    &["repository", "git_url"],
                ],
            ),
        },
        kind,
        name,
        commit: if deleted { None } else { commit },
        deleted,
    })
}

fn gitlab(body: &Value) -> Result<PushEvent, String> {
    let full_ref = text(body, &["ref"]).ok_or("the push payload has no `ref`")?;
    let after = text(body, &["after"]).unwrap_or("");
    let checkout = text(body, &["checkout_sha"]);
    let deleted = is_zero(after);
    // For an annotated tag `after` is the tag object; checkout_sha is the commit.
    let commit = checkout
        .or(Some(after).filter(|a| !a.is_empty()))
        .map(str::to_string);
    let (kind, name) = split(full_ref);
    Ok(PushEvent {
        provider: Provider::GitLab,
        repository: Repository {
            full_name: text(body, &["project", "path_with_namespace"]).map(str::to_string),
            urls: urls(
                body,
                &[
                    &["project", "git_http_url"],
                    &["project", "git_ssh_url"],
                    &["project", "web_url"],
                    &["repository", "git_http_url"],
                    &["repository", "git_ssh_url"],
                    &["repository", "homepage"],
                ],
            ),
        },
        kind,
        name,
        commit: if deleted { None } else { commit },
        deleted,
    })
}

fn bitbucket_cloud(body: &Value) -> Result<Vec<PushEvent>, String> {
    let changes = body
        .get("push")
        .and_then(|p| p.get("changes"))
        .and_then(Value::as_array)
        .ok_or("the repo:push payload has no push.changes")?;
    let repository = Repository {
        full_name: text(body, &["repository", "full_name"]).map(str::to_string),
        urls: urls(body, &[&["repository", "links", "html", "href"]]),
    };
    let mut events = Vec::new();
    for change in changes {
        let new = change.get("new").filter(|n| !n.is_null());
        let side = new.or_else(|| change.get("old").filter(|o| !o.is_null()));
        let Some(side) = side else { continue };
        let Some(name) = text(side, &["name"]) else {
            continue;
        };
        let kind = match text(side, &["type"]) {
            Some("tag") => Some(RefKind::Tag),
            Some("branch" | "named_branch") => Some(RefKind::Branch),
            _ => None,
        };
        let deleted = new.is_none()
            || change
                .get("closed")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let commit = new
            .and_then(|n| text(n, &["target", "hash"]))
            .map(str::to_string);
        events.push(PushEvent {
            provider: Provider::Bitbucket,
            repository: repository.clone(),
            kind,
            name: name.to_string(),
            commit: if deleted { None } else { commit },
            deleted,
        });
    }
    Ok(events)
}

fn bitbucket_dc(body: &Value) -> Result<Vec<PushEvent>, String> {
    let changes = body
        .get("changes")
        .and_then(Value::as_array)
        .ok_or("the repo:refs_changed payload has no changes")?;
    let repo = body.get("repository").cloned().unwrap_or(Value::Null);
    let full_name = match (text(&repo, &["project", "key"]), text(&repo, &["slug"])) {
        (Some(project), Some(slug)) => Some(format!("{project}/{slug}")),
        _ => None,
    };
    let mut repo_urls = Vec::new();
    for group in ["clone", "self"] {
        if let Some(links) = repo
            .get("links")
            .and_then(|l| l.get(group))
            .and_then(Value::as_array)
        {
            for link in links {
                if let Some(href) = text(link, &["href"]) {
                    repo_urls.push(href.to_string());
                }
            }
        }
    }
    let repository = Repository {
        full_name,
        urls: repo_urls,
    };
    let mut events = Vec::new();
    for change in changes {
        let Some(full_ref) = text(change, &["ref", "id"]).or_else(|| text(change, &["refId"]))
        else {
            continue;
        };
        let to = text(change, &["toHash"]).unwrap_or("");
        let deleted = text(change, &["type"]) == Some("DELETE") || is_zero(to);
        let (kind, name) = split(full_ref);
        events.push(PushEvent {
            provider: Provider::Bitbucket,
            repository: repository.clone(),
            kind,
            name,
            commit: if deleted || to.is_empty() {
                None
            } else {
                Some(to.to_string())
            },
            deleted,
        });
    }
    Ok(events)
}

/// A repository URL reduced for comparison: no scheme, user, port, `.git`
/// or trailing `/`; lower case. `git@host:team/web.git`,
/// `ssh://git@host:22/team/web` and `https://host/team/web.git` all give
/// `host/team/web`.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let (rest, scp) = match url.split_once("://") {
        Some((_, rest)) => (rest, false),
        None => (url, !url.starts_with('/')),
    };
    let (authority, path) = if scp {
        match rest.split_once(':') {
            Some((host, path)) => (host, format!("/{}", path.trim_start_matches('/'))),
            None => (rest, String::new()),
        }
    } else {
        match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, String::new()),
        }
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{host}{path}").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_normalise_alike() {
        let want = "github.com/team/web";
        for url in [
            "https://github.com/team/web.git",
            "https://github.com/team/web",
            "git@github.com:team/web.git",
            "ssh://git@github.com:22/team/web.git",
            "https://token@GitHub.com/Team/Web/",
            "git://github.com/team/web.git",
        ] {
            assert_eq!(normalize_url(url), want, "{url}");
        }
        assert_eq!(normalize_url("file:///srv/git/web.git"), "/srv/git/web");
        assert_eq!(normalize_url("/srv/git/web.git"), "/srv/git/web");
    }
}
