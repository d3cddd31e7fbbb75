//! Statement tickets and prepared-statement handles that carry their SQL (the
//! server keeps no state per handle, so re-executed handles never pin memory)
//! and are signed with a key known only to this server process, so a client
//! cannot forge one to run other SQL.

use std::hash::{BuildHasher, Hasher};

use std::collections::hash_map::RandomState;

/// Bytes of the signature appended to every handle.
const SIGNATURE_LEN: usize = 16;

/// Signs and checks handles with two randomly keyed SipHash functions.
#[derive(Debug, Default)]
pub struct HandleSigner {
    first: RandomState,
    second: RandomState,
}

/// What a handle carries: the SQL and, once bound, the parameters as an Arrow
/// IPC stream (empty when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementHandle {
    /// The statement's text.
    pub sql: String,
    /// Bound parameter values, one row, as an Arrow IPC stream.
    pub parameters: Vec<u8>,
}

impl HandleSigner {
    fn signature(&self, payload: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut signature = [0u8; SIGNATURE_LEN];
        for (state, part) in [&self.first, &self.second]
            .into_iter()
            .zip(signature.chunks_mut(8))
        {
            let mut hasher = state.build_hasher();
            hasher.write(payload);
            part.copy_from_slice(&hasher.finish().to_le_bytes());
        }
        signature
    }

    /// Encodes and signs a handle.
    pub fn encode(&self, handle: &StatementHandle) -> Vec<u8> {
        let sql = handle.sql.as_bytes();
        let mut bytes = Vec::with_capacity(8 + sql.len() + handle.parameters.len() + SIGNATURE_LEN);
        bytes.extend_from_slice(&(sql.len() as u64).to_le_bytes());
        bytes.extend_from_slice(sql);
        bytes.extend_from_slice(&handle.parameters);
        let signature = self.signature(&bytes);
        bytes.extend_from_slice(&signature);
        bytes
    }

    /// Checks the signature and decodes a handle; `None` for anything this
    /// server did not issue.
    pub fn decode(&self, bytes: &[u8]) -> Option<StatementHandle> {
        let payload_len = bytes.len().checked_sub(SIGNATURE_LEN)?;
        let (payload, signature) = bytes.split_at(payload_len);
        if self.signature(payload) != signature {
            return None;
        }
        let sql_len =
            usize::try_from(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?)).ok()?;
        let sql = payload.get(8..8usize.checked_add(sql_len)?)?;
        Some(StatementHandle {
            sql: String::from_utf8(sql.to_vec()).ok()?,
            parameters: payload.get(8 + sql_len..)?.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_resist_forgery() {
        let signer = HandleSigner::default();
        let handle = StatementHandle {
            sql: "SELECT 1".into(),
            parameters: vec![1, 2, 3],
        };
        let mut bytes = signer.encode(&handle);
        assert_eq!(signer.decode(&bytes), Some(handle));
        bytes[9] ^= 1;
        assert_eq!(signer.decode(&bytes), None);
        assert_eq!(
            HandleSigner::default().decode(&signer.encode(&StatementHandle {
                sql: "SELECT 2".into(),
                parameters: vec![],
            })),
            None
        );
        assert_eq!(signer.decode(&[0; 4]), None);
    }
}
