//! Local mode's desired state: a folder of ApplicationDeployment YAMLs, re-read when it
//! or a component file it names changes.

use super::reconciler::DesiredDeployment;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A scan of the folder: the documents plus a digest that changes whenever any of
/// them, or any watched component file, changes.
pub struct Scan {
    pub documents: Vec<DesiredDeployment>,
    pub digest: [u8; 32],
}

fn is_deployment_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    );
    !hidden && yaml && path.is_file()
}

/// Reads every `*.yaml` / `*.yml` in `dir` (not recursively; hidden files such as
/// editor swap files are skipped). A missing folder is an empty desired state.
pub fn scan(dir: &Path, watched_files: &[PathBuf]) -> std::io::Result<Scan> {
    let mut hasher = Sha256::new();
    let mut documents = Vec::new();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_deployment_file(p))
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err),
    };
    paths.sort();
    for path in paths {
        let yaml = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // Deleted between listing and reading: it is simply gone.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        hasher.update(path.as_os_str().as_encoded_bytes());
        hasher.update((yaml.len() as u64).to_le_bytes());
        hasher.update(&yaml);
        documents.push(DesiredDeployment {
            source: path.display().to_string(),
            base_dir: path.parent().map(Path::to_owned).unwrap_or_default(),
            yaml,
            expected_id: None,
        });
    }
    for file in watched_files {
        hasher.update(file.as_os_str().as_encoded_bytes());
        if let Ok(meta) = std::fs::metadata(file) {
            hasher.update(meta.len().to_le_bytes());
            if let Ok(modified) = meta.modified() {
                hasher.update(format!("{modified:?}").as_bytes());
            }
        }
    }
    Ok(Scan {
        documents,
        digest: hasher.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_tracks_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "x").unwrap();
        std::fs::write(dir.path().join(".a.yaml.swp"), "junk").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "junk").unwrap();
        let first = scan(dir.path(), &[]).unwrap();
        assert_eq!(first.documents.len(), 1);
        assert_eq!(scan(dir.path(), &[]).unwrap().digest, first.digest);
        std::fs::write(dir.path().join("a.yaml"), "y").unwrap();
        let second = scan(dir.path(), &[]).unwrap();
        assert_ne!(second.digest, first.digest);
        std::fs::write(dir.path().join("w.wasm"), "1").unwrap();
        let watched = [dir.path().join("w.wasm")];
        let third = scan(dir.path(), &watched).unwrap();
        std::fs::write(dir.path().join("w.wasm"), "12").unwrap();
        assert_ne!(scan(dir.path(), &watched).unwrap().digest, third.digest);
        assert!(scan(&dir.path().join("missing"), &[])
            .unwrap()
            .documents
            .is_empty());
    }
}
