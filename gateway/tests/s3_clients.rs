//! Real S3 clients from the package registries (placeholder: filled in below).
