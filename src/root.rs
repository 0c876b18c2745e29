//! The one directory a server lets its clients name paths in.
//!
//! `arrowquant serve --root DIR` puts a [`Root`] into its session's configuration. Every path a
//! client names — a table function's argument, a job's model and output, `CREATE EXTERNAL TABLE
//! … LOCATION`, `COPY … TO` — goes through [`Root::resolve`]: relative paths are taken from the
//! root, symbolic links are followed, and whatever does not end up inside the root is refused
//! with the path and the root named. Sessions without a `Root` (the CLI, Python) read any path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, plan_err};
use datafusion::execution::SessionState;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::{CreateExternalTable, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

/// A path refused for lying outside the root (a kind of its own, so a server can answer it as
/// "permission denied" and count it).
#[derive(Debug)]
pub struct OutsideRoot(pub String);

impl std::fmt::Display for OutsideRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OutsideRoot {}

/// The directory clients' paths must lie in (canonical: absolute, links resolved).
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// The root at `dir`, which must exist and be a directory.
    pub fn new(dir: &Path) -> Result<Root> {
        let dir = dir
            .canonicalize()
            .map_err(|e| DataFusionError::Plan(format!("--root {}: {e}", dir.display())))?;
        if !dir.is_dir() {
            return plan_err!("--root {}: not a directory", dir.display());
        }
        Ok(Root { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `path` (relative to the root, or absolute) as the absolute path it names, links
    /// followed, if that lies inside the root; `what` names the argument in the error. A path
    /// that does not exist yet (an output) is checked through its nearest existing ancestor,
    /// and must not climb out with `..` below it.
    pub fn resolve(&self, what: &str, path: &str) -> Result<PathBuf> {
        let refuse = |why: &str| {
            Err(DataFusionError::External(Box::new(OutsideRoot(format!(
                "{what} '{path}': {why}; paths must lie under the server's root {}",
                self.dir.display()
            )))))
        };
        if path.is_empty() {
            return refuse("empty path");
        }
        let local = match path.split_once("://") {
            Some(("file", rest)) => rest,
            Some((scheme, _)) => return refuse(&format!("'{scheme}://' is not a local path")),
            None => path,
        };
        let joined = self.dir.join(local);
        // The longest prefix that exists, canonicalised; the rest must be plain names.
        let mut existing = joined.as_path();
        let mut rest = Vec::new();
        let resolved_prefix = loop {
            match existing.canonicalize() {
                Ok(p) => break p,
                Err(_) => match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(name)) => {
                        rest.push(name.to_owned());
                        existing = parent;
                    }
                    // A path ending in '..' has no file name: that '..' climbs out of a
                    // directory that does not exist, so where it leads cannot be checked.
                    (Some(_), None) => return refuse("'..' in a path that does not exist yet"),
                    _ => return refuse("no part of it exists"),
                },
            }
        };
        let mut resolved = resolved_prefix;
        for name in rest.iter().rev() {
            resolved.push(name);
        }
        if !resolved.starts_with(&self.dir) {
            return refuse(&format!("it resolves to {}", resolved.display()));
        }
        Ok(resolved)
    }

    /// The root a session was given, if any.
    pub fn of_session(session: &dyn Session) -> Option<Arc<Root>> {
        session.config().get_extension::<Root>()
    }

    /// Puts this root into `state`: its configuration (for the table functions), a planner that
    /// checks `COPY … TO`, and table factories that check `CREATE EXTERNAL TABLE … LOCATION`.
    pub fn confine(self, state: SessionState) -> SessionState {
        let root = Arc::new(self);
        let mut config = state.config().clone();
        config.set_extension(root.clone());
        let factories = state
            .table_factories()
            .iter()
            .map(|(name, inner)| {
                let factory: Arc<dyn TableProviderFactory> = Arc::new(ConfinedFactory {
                    root: root.clone(),
                    inner: inner.clone(),
                });
                (name.clone(), factory)
            })
            .collect();
        datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .with_table_factories(factories)
            .with_query_planner(Arc::new(ConfinedPlanner { root }))
            .build()
    }
}

/// `CREATE EXTERNAL TABLE`'s factory, refusing a location outside the root.
#[derive(Debug)]
struct ConfinedFactory {
    root: Arc<Root>,
    inner: Arc<dyn TableProviderFactory>,
}

#[async_trait]
impl TableProviderFactory for ConfinedFactory {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let mut cmd = cmd.clone();
        for location in &mut cmd.locations {
            let resolved = self.root.resolve("LOCATION", location)?;
            // A directory stays one: DataFusion lists a location that ends in '/'.
            *location = if location.ends_with('/') || resolved.is_dir() {
                format!("{}/", resolved.display())
            } else {
                resolved.display().to_string()
            };
        }
        self.inner.create(state, &cmd).await
    }
}

/// The default planner, after checking that every `COPY … TO` writes inside the root.
#[derive(Debug)]
struct ConfinedPlanner {
    root: Arc<Root>,
}

#[async_trait]
impl QueryPlanner for ConfinedPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut refused = None;
        logical_plan.apply(|node| {
            if let LogicalPlan::Copy(copy) = node
                && let Err(e) = self.root.resolve("COPY TO", &copy.output_url)
            {
                refused = Some(e);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if let Some(e) = refused {
            return Err(e);
        }
        DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("arrowquant-root-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/models")).unwrap();
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::fs::write(dir.join("outside/secret"), b"x").unwrap();
        Scratch(dir)
    }

    #[test]
    fn paths_inside_pass_and_the_rest_are_refused_by_name() {
        let s = scratch("paths");
        let root = Root::new(&s.0.join("root")).unwrap();
        let inside = root.resolve("path", "models").unwrap();
        assert_eq!(inside, root.dir().join("models"));
        // Not existing yet (an output): checked through its parent.
        assert_eq!(
            root.resolve("output", "models/new/out.gguf").unwrap(),
            root.dir().join("models/new/out.gguf")
        );
        let absolute = root.dir().join("models").display().to_string();
        assert!(root.resolve("path", &absolute).is_ok());
        let file_url = format!("file://{absolute}");
        assert!(root.resolve("path", &file_url).is_ok());

        std::os::unix::fs::symlink(s.0.join("outside"), s.0.join("root/link")).unwrap();
        for (path, why) in [
            ("../outside/secret", "resolves to"),
            (
                &*s.0.join("outside/secret").display().to_string(),
                "resolves to",
            ),
            ("link/secret", "resolves to"),
            ("link", "resolves to"),
            ("new/../../outside", "'..' in a path"),
            ("s3://bucket/model", "not a local path"),
            ("", "empty path"),
        ] {
            let e = root
                .resolve("read_safetensors path", path)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{path}: {e}");
            assert!(e.contains("under the server's root"), "{path}: {e}");
        }
    }
}
