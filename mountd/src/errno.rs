//! The one place where mountd errors become errno values.

use cyxcloud_client::ClientError;
use cyxcloud_proto::ErrorCode;
use fuser::Errno;

use crate::error::Error;

/// The errno for a stable CyxCloud error code.
pub fn of_code(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::NotFound => libc::ENOENT,
        ErrorCode::AlreadyExists => libc::EEXIST,
        ErrorCode::NotEmpty => libc::ENOTEMPTY,
        ErrorCode::NotDirectory => libc::ENOTDIR,
        ErrorCode::IsDirectory => libc::EISDIR,
        ErrorCode::InvalidArgument | ErrorCode::InvalidName => libc::EINVAL,
        ErrorCode::Unauthenticated | ErrorCode::Expired => libc::EACCES,
        ErrorCode::PermissionDenied => libc::EACCES,
        ErrorCode::QuotaExceeded => libc::EDQUOT,
        ErrorCode::NoSpace | ErrorCode::Draining => libc::ENOSPC,
        ErrorCode::TooLarge => libc::EFBIG,
        ErrorCode::PreconditionFailed | ErrorCode::ResyncRequired => libc::ESTALE,
        ErrorCode::Conflict => libc::EAGAIN,
        ErrorCode::NotSupported => libc::EOPNOTSUPP,
        ErrorCode::Unavailable => libc::EIO,
        ErrorCode::HashMismatch
        | ErrorCode::Corrupt
        | ErrorCode::Unrecoverable
        | ErrorCode::Internal => libc::EIO,
    }
}

/// The errno for a mountd error.
pub fn of(e: &Error) -> i32 {
    match e {
        Error::Remote { code, .. } => of_code(*code),
        Error::Client(ClientError::Io(io)) => io.raw_os_error().unwrap_or(libc::EIO),
        Error::Client(c) => c.code().map_or(libc::EIO, of_code),
        Error::Offline(_) => libc::EIO,
        Error::Store(_) | Error::Corrupt { .. } => libc::EIO,
        Error::Io(io) => io.raw_os_error().unwrap_or(libc::EIO),
        Error::NotFound(_) => libc::ENOENT,
        Error::Exists(_) => libc::EEXIST,
        Error::NotDir(_) => libc::ENOTDIR,
        Error::IsDir(_) => libc::EISDIR,
        Error::NotEmpty(_) => libc::ENOTEMPTY,
        Error::Invalid(_) => libc::EINVAL,
        Error::NameTooLong => libc::ENAMETOOLONG,
        Error::NotPermitted(_) => libc::EPERM,
        Error::ReadOnly => libc::EROFS,
        Error::Unsupported(_) => libc::EOPNOTSUPP,
        Error::CrossBucket(_) => libc::EXDEV,
        Error::NoAttr => libc::ENODATA,
        Error::Range => libc::ERANGE,
        Error::BadHandle(_) => libc::EBADF,
        Error::Config(_) | Error::CacheInUse { .. } => libc::EIO,
    }
}

/// The fuser errno for a mountd error.
pub fn errno(e: &Error) -> Errno {
    let n = of(e);
    if n == libc::EIO {
        tracing::warn!(error = %e, "I/O error returned to the caller");
    } else {
        tracing::debug!(error = %e, errno = n, "error returned to the caller");
    }
    Errno::from_i32(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_a_positive_errno() {
        for c in ErrorCode::ALL {
            assert!(of_code(c) > 0, "{c}");
        }
        assert_eq!(of_code(ErrorCode::NotEmpty), libc::ENOTEMPTY);
        assert_eq!(of_code(ErrorCode::AlreadyExists), libc::EEXIST);
        let e = Error::rpc(
            "rename",
            cyxcloud_proto::status(ErrorCode::NotDirectory, "x"),
        );
        assert_eq!(of(&e), libc::ENOTDIR);
        assert_eq!(of(&Error::CrossBucket("a".into())), libc::EXDEV);
        assert_eq!(
            of(&Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC))),
            libc::ENOSPC
        );
    }
}
