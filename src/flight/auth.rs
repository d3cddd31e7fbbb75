//! Authentication for the Flight SQL server: off unless a token or a users
//! file is given. Then a client either sends `authorization: Bearer <token>`
//! with the configured token, or exchanges a user name and password (HTTP
//! basic, in the Flight handshake) for a bearer token the server signs; every
//! other call without a valid token is refused with `Unauthenticated`.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::handles::{HandleSigner, StatementHandle};
use crate::error::{Result, SessionqlError};

/// Who may call the server.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    /// A shared bearer token (`--auth-token`).
    pub token: Option<String>,
    /// User names and passwords (`--users-file`, lines `user:password`).
    pub users: HashMap<String, String>,
}

impl Credentials {
    /// Reads a users file: one `user:password` per line, `#` comments.
    pub fn read_users_file(path: &Path) -> Result<HashMap<String, String>> {
        let text = std::fs::read_to_string(path).map_err(|source| SessionqlError::EventsPath {
            path: path.to_path_buf(),
            source,
        })?;
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, password)) = line.split_once(':') else {
                return Err(SessionqlError::Invalid(format!(
                    "{}:{}: expected user:password",
                    path.display(),
                    index + 1
                )));
            };
            users.insert(user.to_string(), password.to_string());
        }
        Ok(users)
    }

    /// True when calls must carry a token.
    pub fn required(&self) -> bool {
        self.token.is_some() || !self.users.is_empty()
    }

    /// Checks a handshake's basic credentials and issues a bearer token.
    pub fn issue_token(
        &self,
        metadata: &MetadataMap,
        signer: &HandleSigner,
    ) -> std::result::Result<String, Status> {
        let header = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated("the handshake needs an authorization header")
            })?;
        if let Some(token) = header.strip_prefix("Bearer ")
            && self.accepts(token, signer)
        {
            return Ok(token.to_string());
        }
        let encoded = header
            .strip_prefix("Basic ")
            .ok_or_else(|| Status::unauthenticated("use Basic user:password in the handshake"))?;
        let decoded = BASE64
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        let valid = self
            .users
            .get(user)
            .is_some_and(|expected| expected == password)
            || self.token.as_deref() == Some(password);
        if !valid {
            return Err(Status::unauthenticated("invalid user name or password"));
        }
        let signed = signer.encode(&StatementHandle {
            sql: format!("user:{user}"),
            parameters: Vec::new(),
        });
        Ok(hex(&signed))
    }

    fn accepts(&self, token: &str, signer: &HandleSigner) -> bool {
        self.token.as_deref() == Some(token)
            || unhex(token)
                .and_then(|bytes| signer.decode(&bytes))
                .is_some_and(|handle| handle.sql.starts_with("user:"))
    }

    /// Refuses a call without a valid bearer token when authentication is on.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        signer: &HandleSigner,
    ) -> std::result::Result<(), Status> {
        if !self.required() {
            return Ok(());
        }
        let token = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|header| header.strip_prefix("Bearer "));
        match token {
            Some(token) if self.accepts(token, signer) => Ok(()),
            _ => Err(Status::unauthenticated("a valid bearer token is required")),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
        .collect()
}
