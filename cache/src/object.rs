//! Artifacts and tree manifests.
//!
//! A file artifact is one blob. A directory artifact is a *tree*: a canonical JSON manifest listing each entry's
//! name, kind, mode (executable or not), size and digest, itself stored as a blob. The tree's digest is the
//! digest of that manifest, so two directories with the same names, modes and contents have the same digest
//! wherever they live and whatever their mtimes.

use serde::{Deserialize, Serialize};

use crate::ObjectDigest;

/// Whether an artifact is a single file or a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A regular file; the digest is of its bytes.
    File,
    /// A directory; the digest is of its [`Tree`] manifest.
    Tree,
}

/// One stage output (or one input) as the store knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Artifact {
    /// File or tree.
    pub kind: ArtifactKind,
    /// The content digest.
    pub digest: ObjectDigest,
    /// Bytes: of the file, or of all files in the tree.
    pub size: u64,
}

/// One entry of a tree manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeEntry {
    /// File name within the directory (no `/`).
    pub name: String,
    /// File or sub-tree.
    pub kind: ArtifactKind,
    /// Whether the file is executable; always false for trees.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
    /// Bytes, as in [`Artifact::size`].
    pub size: u64,
    /// Digest of the file, or of the sub-tree's manifest.
    pub digest: ObjectDigest,
}

/// A directory manifest: entries sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// Entries, sorted by name bytes, names unique.
    pub entries: Vec<TreeEntry>,
}

impl Tree {
    /// Builds a tree from entries in any order.
    pub fn new(mut entries: Vec<TreeEntry>) -> Self {
        entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Tree { entries }
    }

    /// The canonical manifest bytes that the tree's digest is taken over.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        // Field order is fixed by the struct definitions and entries are sorted, so this is canonical.
        let mut bytes = serde_json::to_vec(self).expect("a tree always serialises");
        bytes.push(b'\n');
        bytes
    }

    /// The tree's digest.
    pub fn digest(&self) -> ObjectDigest {
        ObjectDigest::of_bytes(&self.to_canonical_bytes())
    }

    /// Total bytes of the files below this tree.
    pub fn size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Parses manifest bytes, checking that they are canonical (sorted, unique names, safe names).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let tree: Tree = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        for pair in tree.entries.windows(2) {
            if pair[0].name.as_bytes() >= pair[1].name.as_bytes() {
                return Err(format!("entries not sorted or not unique at `{}`", pair[1].name));
            }
        }
        if let Some(e) = tree.entries.iter().find(|e| !is_safe_name(&e.name)) {
            return Err(format!("unsafe entry name `{}`", e.name));
        }
        Ok(tree)
    }
}

/// True for a name that is one path component: not empty, not `.`/`..`, no `/` or NUL.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}
