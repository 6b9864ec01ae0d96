//! `[[app]] restart`, `restart_limit`, `restart_window`, `restart_backoff`,
//! `restart_backoff_max` and `on_live_failure`: what cutover does when the
//! live release dies (see the README's "Supervision").

use crate::error::Located;
use crate::units::HumanDuration;
use std::time::Duration;
use toml::Spanned;

/// `[[app]] restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// The live release is started again in its slot when it dies.
    OnFailure,
    /// A dead live release stays dead until a deployment.
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// `[[app]] on_live_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLiveFailure {
    /// Start the live release again in its slot.
    Restart,
    /// Switch to the `keep_old` standby when it is healthy; restart otherwise.
    Standby,
}

/// How a dead live release is brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperviseConfig {
    pub restart: RestartPolicy,
    /// Restarts allowed within `window`; one more and cutover gives up.
    pub limit: u32,
    pub window: Duration,
    /// Wait before the first restart, doubled for each further one within
    /// `window`, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub on_live_failure: OnLiveFailure,
}

impl Default for SuperviseConfig {
    fn default() -> Self {
        SuperviseConfig {
            restart: RestartPolicy::OnFailure,
            limit: 5,
            window: Duration::from_secs(300),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            on_live_failure: OnLiveFailure::Restart,
        }
    }
}

impl SuperviseConfig {
    /// The wait before restart number `attempt` (1-based) within the window.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

/// The raw keys, as `[[app]]` has them.
pub(crate) struct RawSupervise<'a> {
    pub restart: Option<&'a Spanned<String>>,
    pub restart_limit: Option<&'a Spanned<i64>>,
    pub restart_window: Option<&'a Spanned<HumanDuration>>,
    pub restart_backoff: Option<&'a Spanned<HumanDuration>>,
    pub restart_backoff_max: Option<&'a Spanned<HumanDuration>>,
    pub on_live_failure: Option<&'a Spanned<String>>,
}

pub(crate) fn validate(raw: RawSupervise<'_>) -> Result<SuperviseConfig, Located> {
    let defaults = SuperviseConfig::default();
    let restart = match raw.restart.map(|r| (r.get_ref().as_str(), r.span())) {
        None | Some(("on-failure", _)) => RestartPolicy::OnFailure,
        Some(("never", _)) => RestartPolicy::Never,
        Some((other, span)) => {
            return Err((
                span,
                format!(
                    "restart `{other}` is not known; use \"on-failure\" (the default) or \"never\""
                ),
            ))
        }
    };
    let on_live_failure = match raw.on_live_failure.map(|r| (r.get_ref().as_str(), r.span())) {
        None | Some(("restart", _)) => OnLiveFailure::Restart,
        Some(("standby", _)) => OnLiveFailure::Standby,
        Some((other, span)) => {
            return Err((
                span,
                format!("on_live_failure `{other}` is not known; use \"restart\" (the default) or \"standby\""),
            ))
        }
    };
    let limit = match raw.restart_limit {
        None => defaults.limit,
        Some(n) => u32::try_from(*n.get_ref())
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                (
                    n.span(),
                    "restart_limit must be between 1 and 1000".to_string(),
                )
            })?,
    };
    let duration = |raw: Option<&Spanned<HumanDuration>>, default: Duration, key: &str| match raw {
        None => Ok(default),
        Some(d) if d.get_ref().0.is_zero() => {
            Err((d.span(), format!("{key} must be more than 0s")))
        }
        Some(d) => Ok(d.get_ref().0),
    };
    let window = duration(raw.restart_window, defaults.window, "restart_window")?;
    let backoff = duration(raw.restart_backoff, defaults.backoff, "restart_backoff")?;
    let backoff_max = duration(
        raw.restart_backoff_max,
        defaults.backoff_max.max(backoff),
        "restart_backoff_max",
    )?;
    if let (Some(max), true) = (raw.restart_backoff_max, backoff_max < backoff) {
        return Err((
            max.span(),
            format!(
                "restart_backoff_max ({backoff_max:?}) is shorter than restart_backoff ({backoff:?})"
            ),
        ));
    }
    Ok(SuperviseConfig {
        restart,
        limit,
        window,
        backoff,
        backoff_max,
        on_live_failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = SuperviseConfig {
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(3),
            ..SuperviseConfig::default()
        };
        let delays: Vec<u128> = (1..=6).map(|n| config.delay(n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000, 3000]);
        assert_eq!(config.delay(u32::MAX), Duration::from_secs(3));
    }
}
