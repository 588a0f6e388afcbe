//! Request bodies as the S3 layer sees them: decoded (`aws-chunked` framing removed, every
//! chunk signature and the trailer signature checked), counted against the declared length,
//! and hashed as they stream (MD5 for the ETag, SHA-256 when the signature covers the body,
//! and the `x-amz-checksum-*` algorithm the client asked for). Nothing is buffered beyond one
//! network read: the caller pulls pieces with [`BodyReader::next`] and only commits what it
//! stored after [`BodyReader::finish`] has verified everything (so a truncated or tampered body
//! never becomes an object).

use axum::body::{Body, BodyDataStream};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Buf, Bytes, BytesMut};
use crc::{CRC_32_ISCSI, CRC_32_ISO_HDLC, CRC_64_NVME, Crc, Table};
use futures::StreamExt;
use md5::{Digest, Md5};
use sha2::Sha256;

use super::error::{Code, S3Error, S3Result};
use super::sigv4;

static CRC32: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISO_HDLC);
static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);
static CRC64NVME: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_NVME);

/// The additional checksum algorithms of S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algo {
    pub const ALL: [Algo; 5] = [
        Algo::Crc32,
        Algo::Crc32c,
        Algo::Crc64Nvme,
        Algo::Sha1,
        Algo::Sha256,
    ];

    /// `crc32`, as in `x-amz-checksum-crc32`.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Crc32 => "crc32",
            Algo::Crc32c => "crc32c",
            Algo::Crc64Nvme => "crc64nvme",
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
        }
    }

    pub fn header(self) -> String {
        format!("x-amz-checksum-{}", self.name())
    }

    /// From `CRC32`, `crc32`, or a header name `x-amz-checksum-crc32`.
    pub fn parse(s: &str) -> Option<Algo> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_prefix("x-amz-checksum-").unwrap_or(&s);
        Algo::ALL.into_iter().find(|a| a.name() == s)
    }
}

enum Checksummer {
    Crc32(crc::Digest<'static, u32, Table<16>>),
    Crc32c(crc::Digest<'static, u32, Table<16>>),
    Crc64(crc::Digest<'static, u64, Table<16>>),
    Sha1(Box<sha1_smol::Sha1>),
    Sha256(Box<Sha256>),
}

impl Checksummer {
    fn new(a: Algo) -> Self {
        match a {
            Algo::Crc32 => Checksummer::Crc32(CRC32.digest()),
            Algo::Crc32c => Checksummer::Crc32c(CRC32C.digest()),
            Algo::Crc64Nvme => Checksummer::Crc64(CRC64NVME.digest()),
            Algo::Sha1 => Checksummer::Sha1(Box::default()),
            Algo::Sha256 => Checksummer::Sha256(Box::default()),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Checksummer::Crc32(d) | Checksummer::Crc32c(d) => d.update(b),
            Checksummer::Crc64(d) => d.update(b),
            Checksummer::Sha1(d) => d.update(b),
            Checksummer::Sha256(d) => d.update(b),
        }
    }

    /// The base64 value, as S3 headers carry it.
    fn finish(self) -> String {
        match self {
            Checksummer::Crc32(d) | Checksummer::Crc32c(d) => {
                B64.encode(d.finalize().to_be_bytes())
            }
            Checksummer::Crc64(d) => B64.encode(d.finalize().to_be_bytes()),
            Checksummer::Sha1(d) => B64.encode(d.digest().bytes()),
            Checksummer::Sha256(d) => B64.encode(d.finalize()),
        }
    }
}

/// The chunk-signature chain of a signed streaming upload.
#[derive(Clone)]
pub struct ChunkSigner {
    pub key: [u8; 32],
    pub amz_date: String,
    pub scope: String,
    /// The seed (header) signature, then each chunk's.
    pub prev: String,
}

impl std::fmt::Debug for ChunkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkSigner")
    }
}

/// How the body is framed and what it must match.
#[derive(Debug, Default)]
pub struct BodySpec {
    /// `aws-chunked` framing.
    pub chunked: bool,
    /// Chunk signatures to verify (signed streaming).
    pub signer: Option<ChunkSigner>,
    /// Trailing headers follow the last chunk.
    pub trailer: bool,
    /// The decoded length the client declared (`Content-Length` or
    /// `x-amz-decoded-content-length`).
    pub length: Option<u64>,
    /// `x-amz-content-sha256` as hex, when the signature covers the body.
    pub sha256: Option<String>,
    /// `Content-MD5` (decoded).
    pub md5: Option<[u8; 16]>,
    /// Compute the MD5 even without `Content-MD5` (for an ETag).
    pub want_md5: bool,
    /// The checksum to compute, and its expected value if it came as a header.
    pub checksum: Option<(Algo, Option<String>)>,
}

/// What a fully read body hashed to.
#[derive(Debug, Clone)]
pub struct Digests {
    /// When computed (`want_md5` or `Content-MD5`).
    pub md5: Option<[u8; 16]>,
    pub len: u64,
    /// `(algorithm, base64 value)` when one was computed (and verified).
    pub checksum: Option<(Algo, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// A request body being read.
pub struct BodyReader {
    stream: BodyDataStream,
    buf: BytesMut,
    spec: BodySpec,
    state: State,
    received: u64,
    md5: Option<Md5>,
    sha256: Option<Sha256>,
    checksum: Option<Checksummer>,
    chunk_sha: Sha256,
    chunk_sig: Option<String>,
    trailers: Vec<(String, String)>,
    trailer_sig: Option<String>,
    /// Raw bytes read from the network (framing included), for limits.
    raw: u64,
}

impl std::fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader")
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// Longest chunk header or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailing headers accepted.
const MAX_TRAILERS: usize = 16;

fn incomplete(received: u64, want: u64) -> S3Error {
    S3Error::new(
        Code::IncompleteBody,
        format!(
            "You did not provide the number of bytes specified by the Content-Length HTTP header ({received} of {want} bytes received)"
        ),
    )
}

fn bad_chunk(msg: impl Into<String>) -> S3Error {
    S3Error::new(
        Code::InvalidRequest,
        format!("malformed aws-chunked body: {}", msg.into()),
    )
}

impl BodyReader {
    pub fn new(body: Body, spec: BodySpec) -> Self {
        let sha256 = spec.sha256.as_ref().map(|_| Sha256::default());
        let checksum = spec.checksum.as_ref().map(|(a, _)| Checksummer::new(*a));
        let md5 = (spec.want_md5 || spec.md5.is_some()).then(Md5::new);
        BodyReader {
            stream: body.into_data_stream(),
            buf: BytesMut::new(),
            state: if spec.chunked {
                State::Header
            } else {
                State::Data(u64::MAX)
            },
            spec,
            received: 0,
            md5,
            sha256,
            checksum,
            chunk_sha: Sha256::default(),
            chunk_sig: None,
            trailers: Vec::new(),
            trailer_sig: None,
            raw: 0,
        }
    }

    /// Bytes of decoded content read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The length the client declared, if any.
    pub fn declared_len(&self) -> Option<u64> {
        self.spec.length
    }

    /// Reads more raw bytes into `buf`; false at the end of the stream.
    async fn fill(&mut self) -> S3Result<bool> {
        match self.stream.next().await {
            None => Ok(false),
            Some(Ok(b)) => {
                self.raw += b.len() as u64;
                if self.buf.is_empty() {
                    self.buf = BytesMut::from(b);
                } else {
                    self.buf.extend_from_slice(&b);
                }
                Ok(true)
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body ended with an error");
                Err(incomplete(self.received, self.spec.length.unwrap_or(0)))
            }
        }
    }

    /// One `\r\n`-terminated line (without it).
    async fn line(&mut self) -> S3Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = self.buf.split_to(i);
                self.buf.advance(2);
                return String::from_utf8(l.to_vec())
                    .map(Some)
                    .map_err(|_| bad_chunk("a chunk header is not UTF-8"));
            }
            if self.buf.len() > MAX_LINE {
                return Err(bad_chunk("a chunk header line is too long"));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    fn account(&mut self, b: &[u8]) -> S3Result<()> {
        self.received += b.len() as u64;
        if let Some(want) = self.spec.length
            && self.received > want
        {
            return Err(S3Error::new(
                Code::InvalidRequest,
                format!("the body holds more than the {want} bytes declared"),
            ));
        }
        if let Some(h) = &mut self.md5 {
            h.update(b);
        }
        if let Some(h) = &mut self.sha256 {
            h.update(b);
        }
        if let Some(c) = &mut self.checksum {
            c.update(b);
        }
        if self.spec.signer.is_some() {
            self.chunk_sha.update(b);
        }
        Ok(())
    }

    /// The next piece of decoded content; `None` at the end (after every check passed).
    pub async fn next(&mut self) -> S3Result<Option<Bytes>> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Data(remaining) => {
                    if remaining == 0 {
                        self.state = State::DataEnd;
                        continue;
                    }
                    if self.buf.is_empty() && !self.fill().await? {
                        if self.spec.chunked {
                            return Err(bad_chunk("the body ended inside a chunk"));
                        }
                        self.state = State::Done;
                        self.check_end()?;
                        return Ok(None);
                    }
                    let n = (self.buf.len() as u64).min(remaining) as usize;
                    let piece = self.buf.split_to(n).freeze();
                    if self.spec.chunked {
                        self.state = State::Data(remaining - n as u64);
                    }
                    self.account(&piece)?;
                    return Ok(Some(piece));
                }
                State::Header => {
                    let Some(line) = self.line().await? else {
                        return Err(bad_chunk("the body ended before the final chunk"));
                    };
                    let (size, ext) = line.split_once(';').unwrap_or((line.as_str(), ""));
                    let size = u64::from_str_radix(size.trim(), 16)
                        .map_err(|_| bad_chunk(format!("bad chunk size {size:?}")))?;
                    self.chunk_sig = ext
                        .trim()
                        .strip_prefix("chunk-signature=")
                        .map(|s| s.trim().to_ascii_lowercase());
                    if self.spec.signer.is_some() && self.chunk_sig.is_none() {
                        return Err(S3Error::new(
                            Code::SignatureDoesNotMatch,
                            "a chunk of a signed streaming upload has no chunk-signature",
                        ));
                    }
                    if size == 0 {
                        self.verify_chunk()?;
                        self.state = State::Trailers;
                    } else {
                        self.state = State::Data(size);
                    }
                }
                State::DataEnd => {
                    while self.buf.len() < 2 {
                        if !self.fill().await? {
                            return Err(bad_chunk("the body ended inside a chunk"));
                        }
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(bad_chunk("chunk data is longer than its declared size"));
                    }
                    self.buf.advance(2);
                    self.verify_chunk()?;
                    self.state = State::Header;
                }
                State::Trailers => {
                    match self.line().await? {
                        None => {}
                        Some(l) if l.is_empty() => {}
                        Some(l) => {
                            let (k, v) = l
                                .split_once(':')
                                .ok_or_else(|| bad_chunk(format!("bad trailer line {l:?}")))?;
                            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                            if k == "x-amz-trailer-signature" {
                                self.trailer_sig = Some(v.to_ascii_lowercase());
                            } else {
                                if self.trailers.len() >= MAX_TRAILERS {
                                    return Err(bad_chunk("too many trailing headers"));
                                }
                                self.trailers.push((k, v));
                            }
                            continue;
                        }
                    }
                    self.state = State::Done;
                    self.verify_trailers()?;
                    self.check_end()?;
                    return Ok(None);
                }
            }
        }
    }

    fn verify_chunk(&mut self) -> S3Result<()> {
        let Some(signer) = &mut self.spec.signer else {
            return Ok(());
        };
        let h = std::mem::take(&mut self.chunk_sha);
        let sts = sigv4::chunk_string_to_sign(
            &signer.amz_date,
            &signer.scope,
            &signer.prev,
            &hex::encode(h.finalize()),
        );
        let want = sigv4::sign(&signer.key, &sts);
        let got = self.chunk_sig.take().unwrap_or_default();
        if !super::util::ct_eq(want.as_bytes(), got.as_bytes()) {
            return Err(S3Error::new(
                Code::SignatureDoesNotMatch,
                "The request signature we calculated does not match the signature you provided (chunk signature).",
            ));
        }
        signer.prev = want;
        Ok(())
    }

    fn verify_trailers(&mut self) -> S3Result<()> {
        if !self.spec.trailer {
            if !self.trailers.is_empty() {
                return Err(bad_chunk("trailing headers were not announced"));
            }
            return Ok(());
        }
        if let Some(signer) = &self.spec.signer {
            let canon: String = self
                .trailers
                .iter()
                .map(|(k, v)| format!("{k}:{v}\n"))
                .collect();
            let sts = sigv4::trailer_string_to_sign(
                &signer.amz_date,
                &signer.scope,
                &signer.prev,
                &sigv4::sha256_hex(canon.as_bytes()),
            );
            let want = sigv4::sign(&signer.key, &sts);
            let got = self.trailer_sig.clone().unwrap_or_default();
            if !super::util::ct_eq(want.as_bytes(), got.as_bytes()) {
                return Err(S3Error::new(
                    Code::SignatureDoesNotMatch,
                    "The request signature we calculated does not match the signature you provided (trailer signature).",
                ));
            }
        }
        // A checksum trailer fills in the expected value of the announced algorithm.
        for (k, v) in &self.trailers {
            if let Some(a) = Algo::parse(k).filter(|_| k.starts_with("x-amz-checksum-")) {
                match &mut self.spec.checksum {
                    Some((algo, expected)) if *algo == a => *expected = Some(v.clone()),
                    _ => {
                        return Err(S3Error::new(
                            Code::InvalidRequest,
                            format!("the trailer {k} was not announced in x-amz-trailer"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_end(&mut self) -> S3Result<()> {
        if let Some(want) = self.spec.length
            && self.received != want
        {
            return Err(incomplete(self.received, want));
        }
        Ok(())
    }

    /// Verifies the declared digests; call after [`next`](Self::next) returned `None`.
    pub fn finish(self) -> S3Result<Digests> {
        if self.state != State::Done {
            return Err(S3Error::internal("body finished before it was read"));
        }
        if let (Some(want), Some(h)) = (&self.spec.sha256, self.sha256) {
            let got = hex::encode(h.finalize());
            if &got != want {
                return Err(S3Error::new(
                    Code::XAmzContentSHA256Mismatch,
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                )
                .with("ClientComputedContentSHA256", want.clone())
                .with("S3ComputedContentSHA256", got));
            }
        }
        let md5: Option<[u8; 16]> = self.md5.map(|h| h.finalize().into());
        if let Some(want) = self.spec.md5
            && Some(want) != md5
        {
            return Err(S3Error::new(
                Code::BadDigest,
                "The Content-MD5 you specified did not match what we received.",
            ));
        }
        let checksum = match (self.spec.checksum, self.checksum) {
            (Some((algo, expected)), Some(c)) => {
                let got = c.finish();
                match expected {
                    Some(e) if e != got => {
                        return Err(S3Error::new(
                            Code::BadDigest,
                            format!(
                                "The {} you specified did not match the calculated checksum.",
                                algo.name().to_uppercase()
                            ),
                        ));
                    }
                    None if self.spec.trailer => {
                        return Err(S3Error::new(
                            Code::InvalidRequest,
                            format!(
                                "the announced trailer x-amz-checksum-{} is missing",
                                algo.name()
                            ),
                        ));
                    }
                    _ => Some((algo, got)),
                }
            }
            _ => None,
        };
        Ok(Digests {
            md5,
            len: self.received,
            checksum,
        })
    }

    /// Reads the whole body (for small XML bodies), refusing more than `limit` bytes.
    pub async fn read_all(mut self, limit: usize) -> S3Result<(Vec<u8>, Digests)> {
        let mut out = Vec::new();
        while let Some(b) = self.next().await? {
            if out.len() + b.len() > limit {
                return Err(S3Error::new(
                    Code::InvalidRequest,
                    format!("the request body is larger than {limit} bytes"),
                ));
            }
            out.extend_from_slice(&b);
        }
        let d = self.finish()?;
        Ok((out, d))
    }

    /// Raw bytes received, framing included.
    pub fn raw_bytes(&self) -> u64 {
        self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(pieces: &[&[u8]], trailer: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        out.extend_from_slice(trailer.as_bytes());
        out.extend_from_slice(b"\r\n");
        out
    }

    async fn read(body: Vec<u8>, spec: BodySpec) -> S3Result<(Vec<u8>, Digests)> {
        BodyReader::new(Body::from(body), spec)
            .read_all(1 << 20)
            .await
    }

    #[tokio::test]
    async fn unsigned_trailer_checksums_are_verified() {
        let crc = B64.encode(CRC32.checksum(b"hello world").to_be_bytes());
        let body = chunked(
            &[b"hello ", b"world"],
            &format!("x-amz-checksum-crc32:{crc}\r\n"),
        );
        let spec = || BodySpec {
            chunked: true,
            trailer: true,
            length: Some(11),
            checksum: Some((Algo::Crc32, None)),
            ..Default::default()
        };
        let (data, d) = read(body, spec()).await.unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(d.checksum.unwrap().1, crc);
        let bad = chunked(&[b"hello ", b"world"], "x-amz-checksum-crc32:AAAAAA==\r\n");
        assert_eq!(read(bad, spec()).await.unwrap_err().code, Code::BadDigest);
        let missing = chunked(&[b"hello ", b"world"], "");
        assert_eq!(
            read(missing, spec()).await.unwrap_err().code,
            Code::InvalidRequest
        );
        // Declared length wrong.
        let body = chunked(
            &[b"hello ", b"world"],
            &format!("x-amz-checksum-crc32:{crc}\r\n"),
        );
        let mut s = spec();
        s.length = Some(12);
        assert_eq!(read(body, s).await.unwrap_err().code, Code::IncompleteBody);
    }

    #[tokio::test]
    async fn plain_bodies_check_length_sha256_and_md5() {
        let ok = BodySpec {
            length: Some(3),
            sha256: Some(sigv4::sha256_hex(b"abc")),
            md5: Some(Md5::digest(b"abc").into()),
            ..Default::default()
        };
        read(b"abc".to_vec(), ok).await.unwrap();
        let short = BodySpec {
            length: Some(4),
            ..Default::default()
        };
        assert_eq!(
            read(b"abc".to_vec(), short).await.unwrap_err().code,
            Code::IncompleteBody
        );
        let sha = BodySpec {
            sha256: Some(sigv4::sha256_hex(b"abd")),
            ..Default::default()
        };
        assert_eq!(
            read(b"abc".to_vec(), sha).await.unwrap_err().code,
            Code::XAmzContentSHA256Mismatch
        );
        let md5 = BodySpec {
            md5: Some([0; 16]),
            ..Default::default()
        };
        assert_eq!(
            read(b"abc".to_vec(), md5).await.unwrap_err().code,
            Code::BadDigest
        );
    }

    #[tokio::test]
    async fn malformed_framing_is_refused() {
        let spec = || BodySpec {
            chunked: true,
            ..Default::default()
        };
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"3\r\nab",
            b"3\r\nabc\r\n",
        ] {
            assert!(read(bad.to_vec(), spec()).await.is_err(), "{bad:?}");
        }
        let (d, _) = read(b"3\r\nabc\r\n0\r\n\r\n".to_vec(), spec())
            .await
            .unwrap();
        assert_eq!(d, b"abc");
    }
}
