//! Fixed-size streaming chunker.
//!
//! Memory is bounded by one chunk per chunker whatever the input size: [`ChunkSplitter`] is fed
//! arbitrary slices (from a socket, a FUSE write, an HTTP body) and hands out each chunk as soon
//! as it is full; [`ReadChunker`] wraps a blocking [`std::io::Read`]. Neither knows about async
//! runtimes, so `core` stays free of tokio.

use std::io::{self, Read};

use bytes::BytesMut;

use crate::error::ChunkError;

/// Checks a configured chunk size.
pub fn validate_chunk_size(size: usize) -> Result<usize, ChunkError> {
    if size == 0 || size > crate::MAX_CHUNK_SIZE {
        return Err(ChunkError::TooLarge {
            size,
            limit: crate::MAX_CHUNK_SIZE,
        });
    }
    Ok(size)
}

/// Push-based chunker: feed bytes, take full chunks.
#[derive(Debug)]
pub struct ChunkSplitter {
    chunk_size: usize,
    buf: BytesMut,
}

impl ChunkSplitter {
    pub fn new(chunk_size: usize) -> Result<Self, ChunkError> {
        let chunk_size = validate_chunk_size(chunk_size)?;
        Ok(ChunkSplitter {
            chunk_size,
            buf: BytesMut::new(),
        })
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Bytes buffered but not yet emitted.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Appends `data`; returns the chunks it completed (usually zero or one).
    pub fn push(&mut self, mut data: &[u8]) -> Vec<BytesMut> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf
                    .reserve(self.chunk_size.min(data.len().max(64 * 1024)));
            }
            let take = (self.chunk_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.chunk_size {
                out.push(std::mem::take(&mut self.buf));
            }
        }
        out
    }

    /// The final, possibly short, chunk (none for empty input or an exact multiple).
    pub fn finish(self) -> Option<BytesMut> {
        (!self.buf.is_empty()).then_some(self.buf)
    }
}

/// Pull-based chunker over a blocking reader. Yields chunks of exactly `chunk_size` bytes
/// except the last.
#[derive(Debug)]
pub struct ReadChunker<R> {
    reader: R,
    chunk_size: usize,
    done: bool,
}

impl<R: Read> ReadChunker<R> {
    pub fn new(reader: R, chunk_size: usize) -> Result<Self, ChunkError> {
        Ok(ReadChunker {
            reader,
            chunk_size: validate_chunk_size(chunk_size)?,
            done: false,
        })
    }
}

impl<R: Read> Iterator for ReadChunker<R> {
    type Item = io::Result<BytesMut>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = BytesMut::zeroed(self.chunk_size);
        let mut filled = 0;
        while filled < self.chunk_size {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    self.done = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        buf.truncate(filled);
        (filled > 0).then_some(Ok(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn splitter_reassembles_any_feed(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            chunk in 1usize..700,
            cuts in proptest::collection::vec(0usize..900, 0..20),
        ) {
            let mut s = ChunkSplitter::new(chunk).unwrap();
            let mut chunks = Vec::new();
            let mut rest = &data[..];
            for c in cuts {
                let c = c.min(rest.len());
                chunks.extend(s.push(&rest[..c]));
                rest = &rest[c..];
            }
            chunks.extend(s.push(rest));
            chunks.extend(s.finish());
            for c in &chunks[..chunks.len().saturating_sub(1)] {
                prop_assert_eq!(c.len(), chunk);
            }
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            prop_assert_eq!(joined, data);
        }

        #[test]
        fn read_chunker_matches_splitter(data in proptest::collection::vec(any::<u8>(), 0..3000), chunk in 1usize..500) {
            let a: Vec<BytesMut> = ReadChunker::new(&data[..], chunk).unwrap().map(|c| c.unwrap()).collect();
            let mut s = ChunkSplitter::new(chunk).unwrap();
            let mut b = s.push(&data);
            b.extend(s.finish());
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn memory_is_bounded_by_chunk_size() {
        // A 64 MiB stream through a 1 MiB chunker never buffers more than one chunk.
        let mut s = ChunkSplitter::new(1 << 20).unwrap();
        let block = vec![1u8; 300_001];
        let mut total = 0;
        for _ in 0..224 {
            for c in s.push(&block) {
                assert_eq!(c.len(), 1 << 20);
                total += c.len();
            }
            assert!(s.pending() < 1 << 20);
        }
        total += s.finish().map_or(0, |c| c.len());
        assert_eq!(total, 224 * 300_001);
    }

    #[test]
    fn bad_chunk_sizes_refused() {
        assert!(ChunkSplitter::new(0).is_err());
        assert!(ChunkSplitter::new(crate::MAX_CHUNK_SIZE + 1).is_err());
    }
}
