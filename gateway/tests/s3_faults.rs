//! Node failures (placeholder: filled in below).
