//! Who may connect over the Postgres protocol: anyone (no users configured,
//! for the loopback default), or the users of `--users-file` with their
//! password, checked as cleartext or with SCRAM-SHA-256 (the default; the
//! password never crosses the wire).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::ConnectionManager;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{SCRAM_ITERATIONS, gen_salted_password};
use datafusion_postgres::pgwire::api::auth::{AuthSource, LoginInfo, Password};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use sessionql_udfs::stable_hash::stable_hash64;

/// How a password is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PasswordMethod {
    /// SCRAM-SHA-256, as PostgreSQL does by default.
    #[default]
    Scram,
    /// The password in clear (use with TLS).
    Cleartext,
}

/// The users allowed in, with their passwords.
#[derive(Clone, Default)]
pub struct PgUsers {
    passwords: HashMap<String, String>,
    token: Option<String>,
}

impl std::fmt::Debug for PgUsers {
    /// Names only: passwords stay out of logs.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_set()
            .entries(self.passwords.keys())
            .finish()
    }
}

impl PgUsers {
    /// Users from `user → password` pairs (as read from a users file); with
    /// a `token` (the server's `--auth-token`), any other user name may
    /// connect with the token as password.
    pub fn new(passwords: HashMap<String, String>, token: Option<String>) -> Self {
        Self { passwords, token }
    }

    /// True when anyone may connect.
    pub fn is_empty(&self) -> bool {
        self.passwords.is_empty() && self.token.is_none()
    }

    fn password_of(&self, user: &str) -> PgWireResult<&str> {
        self.passwords
            .get(user)
            .or(self.token.as_ref())
            .map(String::as_str)
            .ok_or_else(|| refused(user))
    }
}

fn refused(user: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        "28P01".to_string(),
        format!("password authentication failed for user \"{user}\""),
    )))
}

#[async_trait]
impl AuthSource for PgUsers {
    /// The stored password, for the cleartext check.
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let password = self.password_of(login.user().unwrap_or_default())?;
        Ok(Password::new(None, password.as_bytes().to_vec()))
    }
}

/// The SCRAM view of the same users: salted passwords.
#[derive(Debug, Clone)]
pub struct ScramUsers(pub Arc<PgUsers>);

#[async_trait]
impl AuthSource for ScramUsers {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let password = self.0.password_of(user)?;
        // A salt per user that stays the same across restarts.
        let salt = stable_hash64(3, user.as_bytes()).to_le_bytes().to_vec();
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Ok(Password::new(Some(salt), salted))
    }
}

/// Startup without a password, for servers with no users configured.
pub struct NoPassword {
    connections: Arc<ConnectionManager>,
}

impl NoPassword {
    /// A startup handler registering connections for query cancellation.
    pub fn new(connections: Arc<ConnectionManager>) -> Self {
        Self { connections }
    }
}

#[async_trait]
impl NoopStartupHandler for NoPassword {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(Arc::clone(&self.connections))
    }
}
