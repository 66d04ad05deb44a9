//! One error type, with the exit codes the Python CLI documents (README, "Exit codes"), so that
//! `rmc verify` and `convert verify` answer alike.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// The output folder, its manifest or a named tensor or module is not there (exit 3).
    NotFound(String),
    /// A manifest version, digest algorithm, dtype or layout this crate does not handle (exit 4).
    Unsupported(String),
    /// A file is not what it claims (bad JSON, a header the file cannot hold) (exit 6).
    Corrupt(String),
    /// The files disagree with the manifest; every problem found is listed (exit 8).
    Mismatch(Vec<String>),
    /// Reading failed for another reason (exit 1).
    Io(String, std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NotFound(_) => 3,
            Error::Unsupported(_) => 4,
            Error::Corrupt(_) => 6,
            Error::Mismatch(_) => 8,
            Error::Io(..) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound(m) | Error::Unsupported(m) | Error::Corrupt(m) => f.write_str(m),
            Error::Mismatch(problems) => {
                write!(f, "{} problem(s): ", problems.len())?;
                let shown: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
                f.write_str(&shown.join("; "))?;
                if problems.len() > 3 {
                    f.write_str("; ...")?;
                }
                Ok(())
            }
            Error::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
