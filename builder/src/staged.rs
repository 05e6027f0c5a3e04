//! Files written under a temporary name beside their destination and renamed into place only when
//! complete and synced, so an interrupted or failed build never leaves a file that looks valid.
//! Dropping a `StagedFile` without committing removes the temporary.

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub struct StagedFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl StagedFile {
    /// Creates `.<name>.XXXXXX.tmp` in `dest`'s directory.
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)?;
        Ok(StagedFile {
            tmp,
            dest: dest.into(),
        })
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// The temporary's path (for tools that take a path, such as the syslinux installer).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Sets `mode`, syncs, and renames onto the destination.
    pub fn commit(self, mode: u32) -> io::Result<PathBuf> {
        let file = self.tmp.as_file();
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        self.tmp.persist(&self.dest).map_err(|e| e.error)?;
        Ok(self.dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nothing_under_the_final_name_until_commit() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("disk.img");
        let staged = StagedFile::create(&dest).unwrap();
        staged.file().write_all(b"data").unwrap();
        assert!(!dest.exists());
        assert!(staged
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".disk.img."));
        staged.commit(0o644).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"data");
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn dropped_staging_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        drop(StagedFile::create(&d.path().join("x")).unwrap());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
