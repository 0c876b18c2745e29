//! Opening the files a model is read from: regular files only, checked before and after the
//! open, so that a FIFO, a device or a directory where a weight or JSON file is expected is
//! refused with its name instead of blocking the run forever (opening a FIFO for reading waits
//! for a writer) or reading a device.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::error::ModelError;

/// What a non-regular file is, for errors.
pub fn file_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

/// Opens `path` (symbolic links followed) for reading if it is a regular file.
pub fn open_regular(path: &Path) -> Result<File, ModelError> {
    let not_regular = |meta: &Metadata| ModelError::NotRegular {
        path: path.to_path_buf(),
        kind: file_kind(meta),
    };
    // The type is checked before opening, so a device is never opened ...
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    // ... and again on the open file, which a non-blocking open reaches at once even if the
    // path was swapped for a FIFO in between.
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty())
        .map_err(|e| ModelError::io(path, std::io::Error::from(e)))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| ModelError::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok(file)
}

/// A whole regular file as text, refused past `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> Result<String, ModelError> {
    let file = open_regular(path)?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| ModelError::io(path, e))?;
    if text.len() as u64 > limit {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("larger than the {limit} bytes accepted")),
        });
    }
    Ok(text)
}
