//! `[s3]` settings of the gateway configuration.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Serve the S3 API on the HTTP port.
    pub enabled: bool,
    /// Base domain(s) for virtual-host style requests (`bucket.<domain>`), comma separated;
    /// empty = path style only (`/bucket/key` and `/s3/bucket/key`).
    pub domain: String,
    /// Region reported by `GetBucketLocation` and `x-amz-bucket-region`. Signatures are
    /// accepted for any region name (one gateway is one region).
    pub region: String,
    /// Largest accepted difference between a request's `x-amz-date` and the gateway's clock.
    pub max_clock_skew_secs: u64,
    /// Unsigned requests act as the admin. Only honoured when the HTTP port is bound to a
    /// loopback address (`host = 127.0.0.1` or `::1`), so only local processes get it: this is
    /// what makes the usage guide's unsigned `curl` examples work on a developer machine.
    pub loopback_anonymous_admin: bool,
    /// Incomplete multipart uploads older than this are aborted (0 = never).
    pub multipart_expiry_secs: u64,
    /// Largest single PUT (S3: 5 GiB).
    pub max_object_bytes: u64,
    /// Smallest part of a multipart upload except the last (S3: 5 MiB).
    pub min_part_bytes: u64,
    /// Largest request header section (S3: 8 KiB).
    pub max_header_bytes: u64,
}

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            enabled: true,
            domain: String::new(),
            region: "us-east-1".into(),
            max_clock_skew_secs: 900,
            loopback_anonymous_admin: false,
            multipart_expiry_secs: 7 * 24 * 3600,
            max_object_bytes: 5 * GIB,
            min_part_bytes: 5 * MIB,
            max_header_bytes: 8 * 1024,
        }
    }
}

impl S3Config {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("s3.{m}")));
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("region must be letters, digits and '-'");
        }
        if self.max_clock_skew_secs == 0 {
            return bad("max_clock_skew_secs must be at least 1");
        }
        if self.max_object_bytes == 0 || self.max_object_bytes > 5 * 1024 * GIB {
            return bad("max_object_bytes must be 1 byte to 5 TiB");
        }
        if self.min_part_bytes > 5 * GIB {
            return bad("min_part_bytes must be at most 5 GiB");
        }
        if self.max_header_bytes < 1024 {
            return bad("max_header_bytes must be at least 1024");
        }
        for d in self.domains() {
            if d.starts_with('.') || d.ends_with('.') || d.contains(['/', ':', ' ']) {
                return bad("domain must be host names like s3.example.com");
            }
        }
        Ok(())
    }

    pub fn domains(&self) -> Vec<String> {
        self.domain
            .split(',')
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect()
    }
}
