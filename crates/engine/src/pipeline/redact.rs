//! Keeps secrets out of build output, git errors and events.

/// What replaces a secret.
pub(crate) const REDACTED: &str = "[redacted]";

/// Replaces every known secret in text.
#[derive(Debug, Default, Clone)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Secrets shorter than this are not searched for (they would mangle
    /// ordinary output and protect nothing).
    const MIN_LEN: usize = 3;

    pub fn add(&mut self, secret: &str) {
        let secret = secret.trim();
        if secret.len() >= Self::MIN_LEN && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
            // Longest first, so a secret containing another is replaced whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Adds the password of a URL's user info (`https://user:token@host/…`).
    pub fn add_url_password(&mut self, url: &str) {
        let Some((_, rest)) = url.split_once("://") else {
            return;
        };
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            match userinfo.split_once(':') {
                Some((_, password)) => self.add(password),
                // A token used as the user name (`https://<token>@host`).
                None => self.add(userinfo),
            }
        }
    }

    pub fn apply(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_passwords_are_replaced() {
        let mut redactor = Redactor::default();
        redactor.add("s3cret-token");
        redactor.add("ab");
        redactor.add_url_password("https://deploy:hunter22@git.example.com/team/web.git");
        assert_eq!(
            redactor.apply("using s3cret-token and hunter22 at ab"),
            "using [redacted] and [redacted] at ab"
        );
        assert_eq!(redactor.apply("nothing here"), "nothing here");
    }
}
