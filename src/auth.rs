//! Who may see and do what (ARCHITECTURE.md §3; the README's security section).
//!
//! A JWT (HS256 shared secret, or an RS256/ES256 public key) names a scope,
//! the `pgfeed` claim: `{"tables": [...], "where": {column: value | [values]},
//! "write": bool}`. Every path that emits or writes a row asks the same
//! [`Scope`]: live events, replay, snapshots, the PEARL endpoint, REST reads
//! and writes. A client's own filters narrow it, never widen it.
//!
//! Tokens are never logged and never appear in an error message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::filter::value_matches;
use crate::names::Names;

/// What a token may see and do.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Tables it may see; absent: all tracked tables.
    #[serde(default)]
    pub tables: Option<Names>,
    /// Rows it may see: each column must be present and equal to the value (or one of the values).
    #[serde(default, rename = "where")]
    pub where_: Map<String, Value>,
    /// Whether it may use the REST write routes.
    #[serde(default)]
    pub write: bool,
}

impl Scope {
    /// Everything, writes included: the scope of every client when auth is off.
    pub fn unbounded() -> Scope {
        Scope {
            tables: None,
            where_: Map::new(),
            write: true,
        }
    }

    pub fn allows_table(&self, table: &str) -> bool {
        self.tables.as_ref().is_none_or(|t| t.contains(table))
    }

    /// A row is in scope when it has every scoped column, each with an allowed value.
    pub fn allows_row(&self, row: &Value) -> bool {
        self.where_
            .iter()
            .all(|(column, allowed)| row.get(column).is_some_and(|value| value_matches(allowed, value)))
    }

    /// A change is visible when its table is, and its new or old row is: a
    /// client sees the update that moves a row out of its scope, nothing after.
    /// A change without rows (TRUNCATE) is visible only to a scope without `where`.
    pub fn allows_change(&self, table: &str, new: Option<&Value>, old: Option<&Value>) -> bool {
        if !self.allows_table(table) {
            return false;
        }
        if self.where_.is_empty() {
            // Decided before the rows: looking at them costs a cache miss per event.
            return true;
        }
        new.is_some_and(|r| self.allows_row(r)) || old.is_some_and(|r| self.allows_row(r))
    }

    /// The table named `from` is now `to`: a scope that names it follows it.
    pub fn follow_rename(&mut self, from: &str, to: &str) {
        if let Some(tables) = &mut self.tables {
            tables.rename(from, to);
        }
    }

    /// Narrows `column` to `values` within what the scope already allows
    /// (Shadower's `?workspace_id=`). Never widens.
    pub fn narrow(&mut self, column: &str, values: Vec<Value>) {
        let kept: Vec<Value> = match self.where_.get(column) {
            None => values,
            Some(allowed) => values.into_iter().filter(|v| value_matches(allowed, v)).collect(),
        };
        self.where_.insert(column.to_string(), Value::Array(kept));
    }
}

/// A verified token: its scope, and when it stops being valid.
#[derive(Debug, Clone)]
pub struct Grant {
    pub scope: Scope,
    /// `exp`, as seconds since 1970.
    pub expires_at: u64,
}

impl Grant {
    /// `exp` as a timer deadline; `None` for a grant that never expires (no token).
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        (self.expires_at != u64::MAX).then(|| tokio::time::Instant::now() + self.remaining())
    }

    /// How long until `exp` (zero when past).
    pub fn remaining(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(self.expires_at.saturating_sub(now))
    }
}

/// Why a token was refused. The text names the reason, never the token.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

#[derive(Debug, Clone, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    pgfeed: Option<Scope>,
}

/// Checks tokens against the configured key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier for the configured key; `None` when no key is configured (auth off).
    /// `public_key` is PEM text or the path of a PEM file (RSA: RS256, EC P-256: ES256).
    pub fn from_config(
        secret: Option<&str>,
        public_key: Option<&str>,
        audience: Option<&str>,
        issuer: Option<&str>,
    ) -> Result<Option<Verifier>> {
        let (key, algorithm) = match (secret, public_key) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => bail!("set PGFEED_JWT_SECRET or PGFEED_JWT_PUBLIC_KEY, not both"),
            (Some(secret), None) => {
                if secret.len() < 16 {
                    bail!("PGFEED_JWT_SECRET is too short: use at least 16 bytes (32 random bytes is better)");
                }
                (DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
            }
            (None, Some(public_key)) => {
                let pem = if public_key.trim_start().starts_with("-----BEGIN") {
                    public_key.to_string()
                } else {
                    std::fs::read_to_string(public_key)
                        .with_context(|| format!("reading PGFEED_JWT_PUBLIC_KEY from {public_key}"))?
                };
                if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    (key, Algorithm::RS256)
                } else {
                    let key = DecodingKey::from_ec_pem(pem.as_bytes())
                        .context("PGFEED_JWT_PUBLIC_KEY is neither an RSA nor an EC public key in PEM")?;
                    (key, Algorithm::ES256)
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = audience.is_some();
        if let Some(audience) = audience {
            validation.set_audience(&[audience]);
        }
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
        }
        Ok(Some(Verifier { key, validation }))
    }

    /// Checks signature, algorithm, `exp`, `nbf`, `aud`, `iss` and the scope claim.
    pub fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            Refusal(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidAudience => "the token is for another audience",
                    ErrorKind::InvalidIssuer => "the token is from another issuer",
                    ErrorKind::InvalidAlgorithm => "the token is signed with another algorithm",
                    ErrorKind::InvalidSignature => "the token's signature does not match",
                    ErrorKind::MissingRequiredClaim(_) => "the token has no exp",
                    ErrorKind::Json(_) => "the token's claims cannot be read (exp is required; pgfeed must be a scope)",
                    _ => "the token cannot be read",
                }
                .to_string(),
            )
        })?;
        Ok(Grant {
            scope: data.claims.pgfeed.unwrap_or(Scope {
                write: false,
                ..Scope::unbounded()
            }),
            expires_at: data.claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope(claim: Value) -> Scope {
        serde_json::from_value(claim).unwrap()
    }

    #[test]
    fn rows_and_changes() {
        let s = scope(json!({"tables": ["database_releases"], "where": {"study_id": [1, 2]}}));
        assert!(s.allows_row(&json!({"id": 9, "study_id": 1})));
        assert!(s.allows_row(&json!({"study_id": "2"})));
        assert!(!s.allows_row(&json!({"study_id": 3})));
        assert!(
            !s.allows_row(&json!({"id": 1})),
            "a row without the scoped column is denied"
        );
        assert!(!s.allows_change("studies", Some(&json!({"study_id": 1})), None));
        // Moving out of scope: the update is seen (old row in scope), nothing after.
        assert!(s.allows_change(
            "database_releases",
            Some(&json!({"study_id": 3})),
            Some(&json!({"study_id": 1}))
        ));
        assert!(!s.allows_change(
            "database_releases",
            Some(&json!({"study_id": 3})),
            Some(&json!({"study_id": 3}))
        ));
        assert!(
            !s.allows_change("database_releases", None, None),
            "a truncate is not judged by rows"
        );
        assert!(Scope::unbounded().allows_change("x", None, None));
    }

    #[test]
    fn narrowing_never_widens() {
        let mut s = scope(json!({"where": {"workspace_id": [1, 2]}}));
        s.narrow("workspace_id", vec![json!(2), json!(3)]);
        assert_eq!(s.where_["workspace_id"], json!([2]));
        let mut open = Scope::unbounded();
        open.narrow("workspace_id", vec![json!("7")]);
        assert!(open.allows_row(&json!({"workspace_id": 7})));
        assert!(!open.allows_row(&json!({"workspace_id": 8})));
        let mut single = scope(json!({"where": {"workspace_id": 1}}));
        single.narrow("workspace_id", vec![json!(5)]);
        assert!(!single.allows_row(&json!({"workspace_id": 5})));
        assert!(!single.allows_row(&json!({"workspace_id": 1})));
    }
}
