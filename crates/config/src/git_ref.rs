//! Git ref names and commit ids as cutover accepts them: the checks every
//! path that takes a ref from outside (webhook payloads, `cutover deploy
//! --ref`, the build pipeline) applies before the value goes anywhere near
//! `git`. They live here, with [`RefKind`], so the webhook receiver and the
//! engine share one definition without depending on each other.

use crate::source::RefKind;

/// Checks a full ref (`refs/heads/…` or `refs/tags/…`) and splits it.
pub fn split_ref(full_ref: &str) -> Result<(RefKind, &str), String> {
    let (kind, name) = RefKind::split(full_ref).ok_or_else(|| {
        format!(
            "ref `{}` is neither a branch (refs/heads/…) nor a tag (refs/tags/…)",
            full_ref.escape_debug()
        )
    })?;
    check_ref_name(name)?;
    Ok((kind, name))
}

/// Git's rules for ref names (`git check-ref-format`), plus: never starting
/// with `-`, at most 255 bytes. Shell metacharacters that git allows (`$`,
/// `(`, backticks, `;`) are fine: a ref name is only ever passed as data.
pub fn check_ref_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "ref name `{}` is not accepted: {why}",
            name.escape_debug()
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    if name.starts_with('-') {
        return bad("it starts with `-`");
    }
    if let Some(c) = name.chars().find(|c| {
        c.is_control() || c.is_whitespace() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return bad(&format!("it contains {c:?}"));
    }
    if name.contains("..") || name.contains("@{") || name == "@" {
        return bad("it contains `..` or `@{`");
    }
    if name.ends_with('.') || name.ends_with('/') || name.starts_with('/') {
        return bad("it starts or ends with `/` or ends with `.`");
    }
    for component in name.split('/') {
        if component.is_empty() || component.starts_with('.') || component.ends_with(".lock") {
            return bad("a component is empty, starts with `.` or ends with `.lock`");
        }
    }
    Ok(())
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits; lower-cased.
pub fn validate_commit(commit: &str) -> Result<String, String> {
    let commit = commit.trim().to_ascii_lowercase();
    if matches!(commit.len(), 40 | 64) && commit.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(commit)
    } else {
        Err(format!(
            "`{}` is not a full commit id (40 or 64 hex digits)",
            commit.escape_debug()
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_follow_git_and_refuse_options() {
        for ok in [
            "main",
            "v1.0-cicd",
            "feature/x",
            "$(touch${IFS}x)",
            "a;b",
            "`id`",
            "ü",
        ] {
            assert!(check_ref_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "--upload-pack=evil",
            "a b",
            "a..b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "@",
            "a@{1}",
            ".hidden",
            "a/.b",
            "a.lock",
            "a/",
            "/a",
            "a//b",
            "a.",
            "a\nb",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad:?}");
        }
        assert!(split_ref("refs/heads/main").is_ok());
        assert!(split_ref("refs/remotes/x").is_err());
        assert!(split_ref("refs/tags/-x").is_err());
    }

    #[test]
    fn commits_are_full_hex_ids() {
        let sha = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(validate_commit(sha).unwrap(), sha.to_ascii_lowercase());
        assert!(validate_commit("0123456").is_err());
        assert!(validate_commit(&"g".repeat(40)).is_err());
        assert!(validate_commit(&"a".repeat(64)).is_ok());
    }
}
