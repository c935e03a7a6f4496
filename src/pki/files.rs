//! Writing a CA directory's files: whole or not at all, secrets 0600.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Secret {
    Yes,
    No,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Clobber {
    Yes,
    No,
}

/// Writes via a temporary file in the same directory and a rename; secrets
/// are 0600 from creation on, never world-readable even for an instant.
pub(super) fn write_file(
    path: &Path,
    contents: &[u8],
    secret: Secret,
    clobber: Clobber,
) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if secret == Secret::Yes { 0o600 } else { 0o644 };
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    let persisted = match clobber {
        Clobber::Yes => tmp.persist(path).map(drop),
        Clobber::No => tmp.persist_noclobber(path).map(drop),
    };
    persisted
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))
}
