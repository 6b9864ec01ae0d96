//! How a command ends when it does not succeed: an exit status and what to
//! print on stderr.

use std::fmt::Display;

/// Exit status 1: the operation failed (deployment failed, daemon
/// unreachable, API error).
pub const FAILED: u8 = 1;
/// Exit status 2: usage or configuration error.
pub const USAGE: u8 = 2;

#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    /// Printed verbatim on stderr; `None` when the output already said it.
    pub message: Option<String>,
}

impl Failure {
    /// The operation failed; `cutover: <message>`, exit 1.
    pub fn failed(message: impl Display) -> Failure {
        Failure {
            code: FAILED,
            message: Some(format!("cutover: {message}")),
        }
    }

    /// Bad usage; `cutover: <message>`, exit 2.
    pub fn usage(message: impl Display) -> Failure {
        Failure {
            code: USAGE,
            message: Some(format!("cutover: {message}")),
        }
    }

    /// A configuration error, printed as is (`file:line:col: message`), exit 2.
    pub fn config(error: &cutover_config::ConfigError) -> Failure {
        Failure {
            code: USAGE,
            message: Some(error.to_string()),
        }
    }

    /// Exit with `code` without printing more.
    pub fn quiet(code: u8) -> Failure {
        Failure {
            code,
            message: None,
        }
    }
}

pub type Outcome = Result<(), Failure>;
