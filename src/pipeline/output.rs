//! Outputs — a directory for `quantize`, a file for `dequantize` — written under a temporary
//! name beside their destination and renamed into place when complete: a run that fails or is
//! interrupted leaves nothing that looks finished, and never touches its input.
//!
//! The rules every writing command gets from here:
//! - an output is never an input, nor holds one: the destination's identity (device, inode) is
//!   compared with every input file's, every directory above it and every place its symbolic
//!   links pass through ([`Inputs`]), which also catches hard links and bind mounts;
//! - without `--force` nothing existing is replaced, even something that appears while the run
//!   writes: the final rename refuses to replace (`RENAME_NOREPLACE`, or an exclusive
//!   placeholder where that is not supported);
//! - `--force` replaces only what the command would write itself: a previous arrowquant output
//!   directory (its `manifest.json` has `"format": "arrowquant-…"` and it holds nothing else
//!   than the files that manifest lists), or for a file output a regular file. The swap is
//!   atomic (`RENAME_EXCHANGE`) and what was swapped out is checked again before it is removed;
//! - partials are named `.NAME.partial-PID`; one left by a process that no longer runs (killed
//!   with SIGKILL, or a crash) is removed by the next run to the same destination.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use crate::model::Model;
use crate::model::input::{file_kind, read_text};

/// Row groups are cut at about this many bytes so readers can stream the file.
const ROW_GROUP_BYTES: usize = 64 << 20;

/// The `format` of an arrowquant manifest starts with this; it is what `--force` trusts.
pub const MANIFEST_FORMAT_PREFIX: &str = "arrowquant-";

/// What an output directory held before manifests listed their `outputs` (they always have,
/// but a manifest without the list is read as this).
const KNOWN_OUTPUTS: [&str; 4] = [
    "weights.parquet",
    "report.parquet",
    "activation_params.parquet",
    "activation_schedule.parquet",
];

/// Symbolic links followed at most, as the kernel does (`ELOOP` past 40).
const MAX_LINKS: usize = 40;

fn io_error(what: &str, path: &Path, e: std::io::Error) -> DataFusionError {
    DataFusionError::Execution(format!("{what} {}: {e}", path.display()))
}

/// The files a command reads, by identity: each file, every directory above it (through its
/// canonical path) and every place its chain of symbolic links passes through. An output whose
/// identity is among them would replace an input or a directory holding one.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// (device, inode) → (what the input is, its path).
    ids: HashMap<(u64, u64), (String, PathBuf)>,
    files: HashSet<(u64, u64)>,
}

impl Inputs {
    /// Every file a model was read from, and its root.
    pub fn of_model(model: &Model) -> Self {
        let mut inputs = Inputs::default();
        for path in &model.sources {
            inputs.add(path, "model");
        }
        inputs.add(&model.root, "model");
        inputs
    }

    /// Protects `path`; `what` names it in errors ("model", "calibration set").
    pub fn add(&mut self, path: &Path, what: &str) {
        if let Ok(meta) = std::fs::metadata(path)
            && meta.is_file()
        {
            self.files.insert((meta.dev(), meta.ino()));
        }
        let mut places = vec![path.to_path_buf()];
        let mut current = path.to_path_buf();
        for _ in 0..MAX_LINKS {
            let Ok(target) = std::fs::read_link(&current) else {
                break;
            };
            // A relative target is relative to the link's directory; an absolute one replaces
            // the whole path when joined.
            current = parent_or_dot(&current).join(target);
            places.push(current.clone());
        }
        for place in places {
            self.protect(&place, what, path);
            if let Ok(dir) = parent_or_dot(&place).canonicalize() {
                for ancestor in dir.ancestors() {
                    self.protect(ancestor, what, path);
                }
            }
        }
    }

    fn protect(&mut self, place: &Path, what: &str, input: &Path) {
        if let Ok(meta) = std::fs::metadata(place) {
            self.ids
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| (what.to_string(), input.to_path_buf()));
        }
    }

    /// Refuses `path` (as it is now, symbolic links followed) if it is or holds an input;
    /// `shown` names it in the error.
    fn check(&self, path: &Path, shown: &Path) -> Result<()> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(());
        };
        let id = (meta.dev(), meta.ino());
        let Some((what, input)) = self.ids.get(&id) else {
            return Ok(());
        };
        let how = if self.files.contains(&id) {
            format!("it is the input file {}", input.display())
        } else {
            format!("it holds the input file {}", input.display())
        };
        Err(DataFusionError::Plan(format!(
            "output {} would replace the input {what}: {how}",
            shown.display()
        )))
    }
}

fn parent_or_dot(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What an output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "file",
        }
    }
}

/// Which partial names this process has used: a process (a Python session) may write several
/// outputs at once, even to the same destination.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The partials this process is writing, so that a signal can remove them even while the work
/// is stuck in blocking code and cannot be dropped. A partial is listed from its creation to
/// its commit; whoever holds the lock may remove what is listed.
static LIVE: Mutex<Vec<(PathBuf, Kind)>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<(PathBuf, Kind)>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes every partial output of this process and exits with `code`: for a signal that the
/// work did not answer in time. The registry stays locked until the exit, so no commit or
/// swap runs meanwhile.
pub fn exit_removing_partials(code: i32) -> ! {
    let registry = live();
    for (path, kind) in registry.iter() {
        let _ = remove(path, *kind);
    }
    std::process::exit(code)
}

/// An output being written: removed on drop unless committed.
#[derive(Debug)]
struct Partial {
    /// The partial's path, `.NAME.partial-PID` beside the destination.
    path: PathBuf,
    kind: Kind,
    /// The destination as the user gave it, for messages and the return value.
    shown: PathBuf,
    parent: PathBuf,
    name: OsString,
    force: bool,
    inputs: Inputs,
    /// Whether drop removes `path`.
    armed: bool,
}

impl Partial {
    /// The partial, and for a file output the file, open for reading and writing.
    fn create(
        destination: &Path,
        kind: Kind,
        inputs: &Inputs,
        force: bool,
    ) -> Result<(Self, Option<File>)> {
        let (parent, name) = split_destination(destination, kind)?;
        let mut partial = Partial {
            path: PathBuf::new(),
            kind,
            shown: destination.to_path_buf(),
            parent,
            name,
            force,
            inputs: inputs.clone(),
            armed: false,
        };
        let target = partial.target();
        inputs.check(&target, destination)?;
        partial.clean_stale();
        match std::fs::symlink_metadata(&target) {
            Ok(_) if force => partial.check_replaceable(&target)?,
            Ok(_) => {
                return Err(DataFusionError::Plan(match partial.refusal(&target)? {
                    None => format!(
                        "output {} already exists (use --force to replace it)",
                        destination.display()
                    ),
                    Some(reason) => format!(
                        "output {} already exists and {reason}: choose another path ({})",
                        destination.display(),
                        partial.force_replaces()
                    ),
                }));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot inspect", destination, e)),
        }
        std::fs::create_dir_all(&partial.parent)
            .map_err(|e| io_error("cannot create", &partial.parent, e))?;
        let mut registry = live();
        let (path, file) = partial.claim_partial()?;
        registry.push((path.clone(), kind));
        partial.path = path;
        partial.armed = true;
        Ok((partial, file))
    }

    /// The partial is no longer this run's to remove (committed, or holding what is not ours).
    fn disarm(&mut self, registry: &mut Vec<(PathBuf, Kind)>) {
        self.armed = false;
        registry.retain(|(path, _)| path != &self.path);
    }

    fn target(&self) -> PathBuf {
        self.parent.join(&self.name)
    }

    /// A sibling named `.NAME.{tag}-PID[-N]`.
    fn sibling(&self, tag: &str, sequence: u64) -> PathBuf {
        let pid = std::process::id();
        let mut name = OsString::from(".");
        name.push(&self.name);
        name.push(if sequence == 0 {
            format!(".{tag}-{pid}")
        } else {
            format!(".{tag}-{pid}-{sequence}")
        });
        self.parent.join(name)
    }

    /// Creates the partial under a name nobody else uses (created exclusively, so never
    /// through a symbolic link someone left there).
    fn claim_partial(&self) -> Result<(PathBuf, Option<File>)> {
        loop {
            let path = self.sibling("partial", SEQUENCE.fetch_add(1, Ordering::Relaxed));
            let created = match self.kind {
                Kind::Dir => std::fs::create_dir(&path).map(|()| None),
                Kind::File => create_new_file(&path).map(Some),
            };
            match created {
                Ok(file) => return Ok((path, file)),
                // Left by an earlier process that had this PID: not ours to touch while it
                // might be another's; take the next number.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error("cannot create", &path, e)),
            }
        }
    }

    /// Refuses to replace `path` (the destination, or what was swapped out of it) unless it is
    /// what this command writes.
    fn check_replaceable(&self, path: &Path) -> Result<()> {
        match self.refusal(path)? {
            None => Ok(()),
            Some(reason) => Err(DataFusionError::Plan(format!(
                "output {} {reason}; {}",
                self.shown.display(),
                self.force_replaces()
            ))),
        }
    }

    /// Why `path` may not be replaced (`None`: it may); an error if it is an input.
    fn refusal(&self, path: &Path) -> Result<Option<String>> {
        self.inputs.check(path, &self.shown)?;
        let meta =
            std::fs::symlink_metadata(path).map_err(|e| io_error("cannot inspect", path, e))?;
        Ok(match self.kind {
            Kind::Dir if meta.is_dir() => previous_output(path).err(),
            Kind::File if meta.is_file() => None,
            _ => Some(format!("is {}", file_kind(&meta))),
        })
    }

    fn force_replaces(&self) -> &'static str {
        match self.kind {
            Kind::Dir => "--force replaces only a previous arrowquant output directory",
            Kind::File => "--force replaces only a regular file",
        }
    }

    /// Removes partials of this destination left by processes that no longer run, and puts
    /// back an output one of them had moved aside to replace it but never replaced.
    fn clean_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.parent) else {
            return;
        };
        let target = self.target();
        for entry in entries.flatten() {
            let Some((tag, pid)) = stale_name(&self.name, &entry.file_name()) else {
                continue;
            };
            let path = entry.path();
            if pid == std::process::id() {
                // Ours only if this process is writing it: a process restarted under the same
                // number (PID 1 in a container, after a crash) finds its predecessor's partials
                // unlisted. What a swap moved aside is never listed: left alone.
                if tag == "replaced" || live().iter().any(|(p, _)| *p == path) {
                    continue;
                }
            } else if is_running(pid) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ours = match self.kind {
                Kind::Dir => meta.is_dir(),
                Kind::File => meta.is_file(),
            };
            if !ours {
                continue;
            }
            if tag == "replaced" && rename_noreplace(&path, &target, self.kind).is_ok() {
                eprintln!(
                    "arrowquant: restored {} from {}, which process {pid} had moved aside to \
                     replace it and stopped before it could",
                    self.shown.display(),
                    path.display()
                );
                continue;
            }
            // Something moved aside is removed only if it is what a run may replace.
            if tag == "replaced" && self.refusal(&path).ok() != Some(None) {
                continue;
            }
            match remove(&path, self.kind) {
                // Another run cleaned it up first.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Ok(()) => eprintln!(
                    "arrowquant: removed {}, left unfinished by process {pid}, which no longer \
                     runs",
                    path.display()
                ),
                Err(e) => eprintln!(
                    "arrowquant: cannot remove {}, left unfinished by process {pid}: {e}",
                    path.display()
                ),
            }
        }
    }

    /// Moves the finished partial into place: never over anything without `--force`, and
    /// with it only over what [`Partial::check_replaceable`] accepts.
    fn commit(&mut self) -> Result<PathBuf> {
        let target = self.target();
        match rename_noreplace(&self.path, &target, self.kind) {
            Ok(()) => {
                self.disarm(&mut live());
                return Ok(self.shown.clone());
            }
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(io_error("cannot rename into place", &self.path, e)),
        }
        if !self.force {
            return Err(DataFusionError::Execution(format!(
                "output {} appeared while this run was writing it (another run to the same \
                 output?); it was left as it is and this run's output removed",
                self.shown.display()
            )));
        }
        self.check_replaceable(&target)?;
        self.replace(&target)?;
        self.disarm(&mut live());
        Ok(self.shown.clone())
    }

    /// Swaps the partial with `target` and removes what came out, once checked.
    fn replace(&mut self, target: &Path) -> Result<()> {
        // Until the swap is checked, the partial's path may hold what is not ours: no signal
        // may remove it meanwhile.
        let mut registry = live();
        match exchange(&self.path, target) {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) => return self.replace_by_moving_aside(target),
            Err(e) => return Err(io_error("cannot swap into place", target, e)),
        }
        // `self.path` now holds what was at the destination a moment ago: checked again, as
        // it may have been replaced since the first check.
        if let Err(refusal) = self.check_replaceable(&self.path) {
            return match exchange(&self.path, target) {
                Ok(()) => Err(refusal),
                Err(e) => {
                    // Never remove what we may not: leave it where it is, and say where.
                    self.disarm(&mut registry);
                    Err(DataFusionError::Execution(format!(
                        "{refusal}; it changed while this run was writing and is now at {}, \
                         where it could not be moved back from: {e}",
                        self.path.display()
                    )))
                }
            };
        }
        if let Err(e) = remove(&self.path, self.kind) {
            eprintln!(
                "arrowquant: cannot remove the replaced output, now at {}: {e}",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Where the file system cannot swap: move the old output aside, check it, move the new
    /// one in, remove the old. A run stopped in between leaves `.NAME.replaced-PID`, which the
    /// next run puts back.
    fn replace_by_moving_aside(&mut self, target: &Path) -> Result<()> {
        let aside = self.sibling("replaced", SEQUENCE.fetch_add(1, Ordering::Relaxed));
        std::fs::rename(target, &aside).map_err(|e| io_error("cannot move aside", target, e))?;
        let put_back = |error: DataFusionError| match rename_noreplace(&aside, target, self.kind) {
            Ok(()) => error,
            Err(e) => DataFusionError::Execution(format!(
                "{error}; the previous output is at {}, where it could not be moved back from: \
                 {e}",
                aside.display()
            )),
        };
        if let Err(refusal) = self.check_replaceable(&aside) {
            return Err(put_back(refusal));
        }
        if let Err(e) = rename_noreplace(&self.path, target, self.kind) {
            return Err(put_back(io_error(
                "cannot rename into place",
                &self.path,
                e,
            )));
        }
        if let Err(e) = remove(&aside, self.kind) {
            eprintln!(
                "arrowquant: cannot remove the replaced output, now at {}: {e}",
                aside.display()
            );
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let mut registry = live();
        if self.armed {
            let _ = remove(&self.path, self.kind);
        }
        self.disarm(&mut registry);
    }
}

/// The destination's directory and name; refuses paths that name no entry (``, `.`, `..`,
/// `/`, and for a file a trailing `/`).
fn split_destination(destination: &Path, kind: Kind) -> Result<(PathBuf, OsString)> {
    let refuse = |why: &str| {
        Err(DataFusionError::Plan(format!(
            "output path '{}' {why}",
            destination.display()
        )))
    };
    if destination.as_os_str().is_empty() {
        return refuse(&format!("is empty: a {} name is expected", kind.noun()));
    }
    if kind == Kind::File && destination.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return refuse("ends with '/': a file name is expected");
    }
    let Some(Component::Normal(name)) = destination.components().next_back() else {
        return refuse(&format!(
            "names no {} of its own (it ends with '.', '..' or '/')",
            kind.noun()
        ));
    };
    Ok((
        parent_or_dot(destination).to_path_buf(),
        name.to_os_string(),
    ))
}

/// `Some(("partial" | "replaced", pid))` for `.NAME.partial-PID` and `.NAME.partial-PID-N`
/// (and the same with `replaced`), the names [`Partial`] gives this destination's siblings.
fn stale_name(name: &OsStr, entry: &OsStr) -> Option<(&'static str, u32)> {
    let rest = entry.as_encoded_bytes().strip_prefix(b".")?;
    let rest = rest.strip_prefix(name.as_encoded_bytes())?;
    for tag in ["partial", "replaced"] {
        let Some(rest) = rest
            .strip_prefix(b".")
            .and_then(|r| r.strip_prefix(tag.as_bytes()))
            .and_then(|r| r.strip_prefix(b"-"))
        else {
            continue;
        };
        let rest = std::str::from_utf8(rest).ok()?;
        let (pid, sequence) = rest.split_once('-').unwrap_or((rest, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(pid) || !digits(sequence) {
            return None;
        }
        return Some((tag, pid.parse().ok()?));
    }
    None
}

/// Whether process `pid` exists (`kill(pid, 0)`: only "no such process" says it does not; a
/// process of another user, or an unusable number, counts as running).
fn is_running(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return true;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Why `dir` is not a previous arrowquant output, if it is not: its manifest says it is one,
/// and it holds nothing but the manifest and the files the manifest lists.
fn previous_output(dir: &Path) -> std::result::Result<(), String> {
    let manifest = dir.join("manifest.json");
    let text = match read_text(&manifest, 64 << 20) {
        Ok(text) => text,
        Err(crate::model::ModelError::NotFound { .. }) => {
            return Err("is a directory without manifest.json".into());
        }
        Err(e) => return Err(format!("has no readable manifest.json ({e})")),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("has a manifest.json that is not JSON ({e})"))?;
    let format = json.get("format").and_then(|f| f.as_str()).unwrap_or("");
    if !format.starts_with(MANIFEST_FORMAT_PREFIX) {
        return Err("has a manifest.json that is not an arrowquant manifest".into());
    }
    let mut written: HashSet<String> = HashSet::from(["manifest.json".to_string()]);
    match json.get("outputs").and_then(|o| o.as_array()) {
        Some(list) => written.extend(list.iter().filter_map(|v| v.as_str()).map(String::from)),
        None => written.extend(KNOWN_OUTPUTS.map(String::from)),
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot be listed ({e})"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot be listed ({e})"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if !regular || !written.contains(&name) {
            return Err(format!(
                "holds {name}, which is not a file arrowquant wrote there"
            ));
        }
    }
    Ok(())
}

fn create_new_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

fn remove(path: &Path, kind: Kind) -> std::io::Result<()> {
    match kind {
        Kind::Dir => std::fs::remove_dir_all(path),
        Kind::File => std::fs::remove_file(path),
    }
}

fn is_exists(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::AlreadyExists || e.kind() == ErrorKind::DirectoryNotEmpty
}

/// Errors of a file system or kernel without the rename flags.
fn is_unsupported(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP]
        .iter()
        .any(|errno| errno.raw_os_error() == code)
}

/// `renameat2(from, to, flags)`; "not supported" where the system has no such call.
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
fn rename_with(from: &Path, to: &Path, flags: rustix::fs::RenameFlags) -> std::io::Result<()> {
    use rustix::fs::{CWD, renameat_with};
    renameat_with(CWD, from, CWD, to, flags).map_err(std::io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn rename_with(_: &Path, _: &Path, _: rustix::fs::RenameFlags) -> std::io::Result<()> {
    Err(std::io::Error::from(rustix::io::Errno::NOSYS))
}

/// Renames `from` to `to` unless `to` exists (then an `AlreadyExists` error), atomically.
fn rename_noreplace(from: &Path, to: &Path, kind: Kind) -> std::io::Result<()> {
    match rename_with(from, to, rustix::fs::RenameFlags::NOREPLACE) {
        Err(e) if is_unsupported(&e) => {}
        done => return done,
    }
    // No such flag here: claim the name with an exclusive create, then rename over the empty
    // placeholder, which only this run can have made.
    match kind {
        Kind::Dir => std::fs::create_dir(to)?,
        Kind::File => drop(create_new_file(to)?),
    }
    std::fs::rename(from, to).inspect_err(|_| {
        let _ = match kind {
            Kind::Dir => std::fs::remove_dir(to),
            Kind::File => std::fs::remove_file(to),
        };
    })
}

/// Swaps `a` and `b` atomically.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    rename_with(a, b, rustix::fs::RenameFlags::EXCHANGE)
}

/// A directory being written.
#[derive(Debug)]
pub struct PartialDir(Partial);

impl PartialDir {
    /// Checks the destination (see the module's rules) and creates `.NAME.partial-PID` beside
    /// it.
    pub fn create(destination: &Path, inputs: &Inputs, force: bool) -> Result<Self> {
        Partial::create(destination, Kind::Dir, inputs, force).map(|(p, _)| PartialDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.path.join(name)
    }

    /// Renames the finished directory into place; returns the destination.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.0.commit()
    }
}

/// A file being written, open for reading and writing.
#[derive(Debug)]
pub struct PartialFile {
    partial: Partial,
    file: File,
}

impl PartialFile {
    /// Checks the destination (see the module's rules) and creates `.NAME.partial-PID` beside
    /// it.
    pub fn create(destination: &Path, inputs: &Inputs, force: bool) -> Result<Self> {
        match Partial::create(destination, Kind::File, inputs, force)? {
            (partial, Some(file)) => Ok(PartialFile { partial, file }),
            (partial, None) => Err(io_error(
                "cannot open",
                &partial.path,
                std::io::Error::from(ErrorKind::NotFound),
            )),
        }
    }

    pub fn path(&self) -> &Path {
        &self.partial.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Syncs the finished file and renames it into place; returns the destination.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.file
            .sync_all()
            .map_err(|e| io_error("cannot sync", &self.partial.path, e))?;
        self.partial.commit()
    }
}

/// Writer settings for the quantized table: no compression, dictionaries only for the
/// repetitive string columns and statistics only for `layer` and `row` (packed codes, scales
/// and raw bytes neither repeat nor prune; hashing and comparing them would cost more than it
/// saves), row groups flushed by size.
fn weights_properties() -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_max_row_group_row_count(Some(1 << 20));
    for column in [vec!["layer"], vec!["dtype"], vec!["q", "scheme"]] {
        let path = ColumnPath::new(column.into_iter().map(str::to_string).collect());
        props = props.set_column_dictionary_enabled(path, true);
    }
    // Statistics only where a reader can prune with them: which tensors and rows a row group
    // holds.
    for column in [vec!["layer"], vec!["row"]] {
        let path = ColumnPath::new(column.into_iter().map(str::to_string).collect());
        props = props.set_column_statistics_enabled(path, EnabledStatistics::Chunk);
    }
    props.build()
}

/// A Parquet file written batch by batch, flushing a row group every [`ROW_GROUP_BYTES`].
pub struct TableWriter {
    writer: ArrowWriter<File>,
    path: PathBuf,
}

impl TableWriter {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self> {
        let file = File::create(path).map_err(|e| io_error("cannot create", path, e))?;
        let writer = ArrowWriter::try_new(file, schema, Some(weights_properties()))?;
        Ok(TableWriter {
            writer,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch)?;
        if self.writer.in_progress_size() > ROW_GROUP_BYTES {
            self.writer.flush()?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<PathBuf> {
        let file = self.writer.into_inner()?;
        file.sync_all()
            .map_err(|e| io_error("cannot sync", &self.path, e))?;
        Ok(self.path)
    }
}

/// Writes a small table in one go.
pub fn write_table(path: &Path, batches: &[RecordBatch], schema: SchemaRef) -> Result<()> {
    let mut writer = TableWriter::create(path, schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(())
}

/// Writes text to a file and syncs it.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = File::create(path).map_err(|e| io_error("cannot create", path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| io_error("cannot write", path, e))
}

/// A tensor's shape as stored in `weights.parquet` (a list of integers), as sizes; NULL or
/// negative dimensions are refused, saying which.
pub fn shape_of(
    list: &dyn datafusion::arrow::array::Array,
) -> std::result::Result<Vec<usize>, String> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    let dims =
        datafusion::arrow::compute::cast(list, &DataType::Int64).map_err(|e| e.to_string())?;
    let dims = dims.as_primitive::<Int64Type>();
    (0..dims.len())
        .map(|i| {
            if dims.is_null(i) {
                return Err(format!("dimension {i} of its shape is NULL"));
            }
            usize::try_from(dims.value(i))
                .map_err(|_| format!("dimension {i} of its shape is {}", dims.value(i)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test, removed when the test ends (passed or not).
    struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("arrowquant-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A directory as a previous run leaves it.
    fn previous(dir: &Path, tag: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let manifest = r#"{"format": "arrowquant-1", "outputs": ["weights.parquet"]}"#;
        std::fs::write(dir.join("manifest.json"), manifest).unwrap();
        std::fs::write(dir.join("weights.parquet"), tag).unwrap();
    }

    fn victim(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("precious.txt"), "keep me").unwrap();
    }

    fn precious(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("precious.txt")).unwrap()
    }

    #[test]
    fn a_destination_made_while_writing_is_never_replaced() {
        let dir = scratch("race");
        let out = dir.join("out");
        let partial = PartialDir::create(&out, &Inputs::default(), false).unwrap();
        previous(partial.path(), "ours");
        // Another run (or anyone) finishes first.
        victim(&out);
        let e = partial.commit().unwrap_err().to_string();
        assert!(e.contains("appeared while this run was writing it"), "{e}");
        assert_eq!(precious(&out), "keep me");
        assert_eq!(names(&dir), ["out"], "the loser's partial is removed");
    }

    #[test]
    fn two_writers_exactly_one_wins() {
        let dir = scratch("two-writers");
        let out = dir.join("out");
        let first = PartialDir::create(&out, &Inputs::default(), false).unwrap();
        let second = PartialDir::create(&out, &Inputs::default(), false).unwrap();
        assert_ne!(first.path(), second.path());
        previous(first.path(), "first");
        previous(second.path(), "second");
        first.commit().unwrap();
        assert!(second.commit().is_err());
        assert_eq!(
            std::fs::read_to_string(out.join("weights.parquet")).unwrap(),
            "first"
        );
        assert_eq!(names(&dir), ["out"]);
    }

    #[test]
    fn force_checks_what_appeared_and_what_it_swapped_out() {
        let dir = scratch("force-race");
        let out = dir.join("out");
        // Nothing there at the start; something not ours appears before the commit.
        let partial = PartialDir::create(&out, &Inputs::default(), true).unwrap();
        victim(&out);
        let e = partial.commit().unwrap_err().to_string();
        assert!(e.contains("is a directory without manifest.json"), "{e}");
        assert_eq!(precious(&out), "keep me");
        assert_eq!(names(&dir), ["out"]);

        // A previous output at the start, swapped for something else before the commit: the
        // swap is undone.
        std::fs::remove_dir_all(&out).unwrap();
        previous(&out, "old");
        let partial = PartialDir::create(&out, &Inputs::default(), true).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
        victim(&out);
        let mut inner = partial.0;
        let target = inner.target();
        let e = inner.replace(&target).unwrap_err().to_string();
        assert!(e.contains("is a directory without manifest.json"), "{e}");
        assert_eq!(precious(&out), "keep me");
        drop(inner);
        assert_eq!(names(&dir), ["out"]);
    }

    #[test]
    fn force_replaces_a_previous_output() {
        let dir = scratch("force");
        let out = dir.join("out");
        previous(&out, "old");
        let partial = PartialDir::create(&out, &Inputs::default(), true).unwrap();
        previous(partial.path(), "new");
        partial.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("weights.parquet")).unwrap(),
            "new"
        );
        assert_eq!(names(&dir), ["out"]);
    }

    #[test]
    fn moving_aside_where_swapping_is_not_supported() {
        let dir = scratch("aside");
        let out = dir.join("out");
        previous(&out, "old");
        let partial = PartialDir::create(&out, &Inputs::default(), true).unwrap();
        previous(partial.path(), "new");
        let mut inner = partial.0;
        let target = inner.target();
        inner.replace_by_moving_aside(&target).unwrap();
        inner.disarm(&mut live());
        assert_eq!(
            std::fs::read_to_string(out.join("weights.parquet")).unwrap(),
            "new"
        );
        assert_eq!(names(&dir), ["out"]);

        // What was moved aside is checked, and put back when it is not an output.
        let partial = PartialDir::create(&out, &Inputs::default(), true).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
        victim(&out);
        let mut inner = partial.0;
        let e = inner
            .replace_by_moving_aside(&target)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a directory without manifest.json"), "{e}");
        assert_eq!(precious(&out), "keep me");
        drop(inner);
        assert_eq!(names(&dir), ["out"]);
    }

    #[test]
    fn an_output_moved_aside_by_a_dead_run_is_put_back() {
        let dir = scratch("restore");
        let dead = dead_pid();
        previous(&dir.join(format!(".out.replaced-{dead}")), "old");
        let e = PartialDir::create(&dir.join("out"), &Inputs::default(), false).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.join("out/weights.parquet")).unwrap(),
            "old"
        );
        assert_eq!(names(&dir), ["out"]);
    }

    #[test]
    fn files_follow_the_same_rules() {
        let dir = scratch("files");
        let out = dir.join("model.safetensors");
        let partial = PartialFile::create(&out, &Inputs::default(), false).unwrap();
        std::fs::write(&out, "someone else's").unwrap();
        assert!(partial.commit().is_err());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "someone else's");
        assert_eq!(names(&dir), ["model.safetensors"]);

        // With --force a regular file is replaced, a directory never.
        let partial = PartialFile::create(&out, &Inputs::default(), true).unwrap();
        use std::io::Write;
        partial.file().write_all(b"new").unwrap();
        partial.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        let folder = dir.join("folder");
        victim(&folder);
        let e = PartialFile::create(&folder, &Inputs::default(), true).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert_eq!(precious(&folder), "keep me");
        assert_eq!(names(&dir), ["folder", "model.safetensors"]);
    }

    #[test]
    fn inputs_are_protected_through_links() {
        let dir = scratch("inputs");
        victim(&dir.join("blobs"));
        std::fs::create_dir_all(dir.join("snap")).unwrap();
        std::os::unix::fs::symlink("../blobs/precious.txt", dir.join("snap/model.bin")).unwrap();
        std::fs::hard_link(dir.join("blobs/precious.txt"), dir.join("hard")).unwrap();
        let mut inputs = Inputs::default();
        inputs.add(&dir.join("snap/model.bin"), "model");
        for (out, how) in [
            ("blobs", "it holds the input file"),
            ("snap", "it holds the input file"),
            (".", "it holds the input file"),
            ("hard", "it is the input file"),
            ("blobs/precious.txt", "it is the input file"),
        ] {
            let e = PartialFile::create(&dir.join(out), &inputs, true).unwrap_err();
            let e = e.to_string();
            assert!(e.contains("would replace the input model"), "{out}: {e}");
            assert!(e.contains(how), "{out}: {e}");
        }
        assert!(PartialDir::create(&dir.join("new"), &inputs, false).is_ok());
    }

    #[test]
    fn destinations_must_name_an_entry() {
        for (path, kind) in [
            ("", Kind::Dir),
            (".", Kind::Dir),
            ("..", Kind::Dir),
            ("a/..", Kind::Dir),
            ("/", Kind::Dir),
            ("out.safetensors/", Kind::File),
        ] {
            assert!(split_destination(Path::new(path), kind).is_err(), "{path}");
        }
        let split = |p: &str| split_destination(Path::new(p), Kind::Dir).unwrap();
        assert_eq!(split("out/"), (PathBuf::from("."), OsString::from("out")));
        assert_eq!(
            split("a/out/."),
            (PathBuf::from("a"), OsString::from("out"))
        );
        assert_eq!(
            split("/x/out"),
            (PathBuf::from("/x"), OsString::from("out"))
        );
    }

    #[test]
    fn stale_names_match_exactly() {
        let name = OsStr::new("out");
        let stale = |entry: &str| stale_name(name, OsStr::new(entry));
        assert_eq!(stale(".out.partial-12"), Some(("partial", 12)));
        assert_eq!(stale(".out.partial-12-3"), Some(("partial", 12)));
        assert_eq!(stale(".out.replaced-7"), Some(("replaced", 7)));
        for other in [
            "out",
            ".out.partial-",
            ".out.partial-12x",
            ".out.partial-1-",
            ".out.partial--1",
            ".outer.partial-12",
            ".out.partial-12.old",
            "x.out.partial-12",
            ".out.other-12",
        ] {
            assert_eq!(stale(other), None, "{other}");
        }
    }

    /// The PID of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_running(pid));
        pid
    }

    #[test]
    fn stale_partials_of_dead_processes_only_are_removed() {
        let dir = scratch("stale");
        let dead = dead_pid();
        let alive = std::os::unix::process::parent_id();
        for name in [
            format!(".out.partial-{dead}"),
            format!(".out.partial-{dead}-2"),
            format!(".out.partial-{alive}"),
            format!(".other.partial-{dead}"),
        ] {
            victim(&dir.join(name));
        }
        // A file by a partial's name is not a directory partial.
        std::fs::write(dir.join(format!(".out.partial-{dead}-9")), "x").unwrap();
        let partial = PartialDir::create(&dir.join("out"), &Inputs::default(), false).unwrap();
        let mut left = names(&dir);
        left.retain(|n| n != &partial.path().file_name().unwrap().to_string_lossy());
        let mut expected = vec![
            format!(".other.partial-{dead}"),
            format!(".out.partial-{alive}"),
            format!(".out.partial-{dead}-9"),
        ];
        expected.sort();
        assert_eq!(left, expected);
    }

    /// A restarted server is PID 1 again in its container: its predecessor's partial, by our own
    /// number but not one this process is writing, is stale; one this process is writing is not.
    #[test]
    fn a_partial_by_our_own_number_that_we_are_not_writing_is_stale() {
        let dir = scratch("own-pid");
        let me = std::process::id();
        victim(&dir.join(format!(".out.partial-{me}-977")));
        victim(&dir.join(format!(".out.replaced-{me}-978")));
        let first = PartialDir::create(&dir.join("out"), &Inputs::default(), false).unwrap();
        let second = PartialDir::create(&dir.join("out"), &Inputs::default(), false).unwrap();
        let mut expected = vec![
            first
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            second
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            format!(".out.replaced-{me}-978"),
        ];
        expected.sort();
        assert_eq!(names(&dir), expected);
    }
}
