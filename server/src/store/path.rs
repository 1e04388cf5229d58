//! Document and collection paths, parsed once at the edge so inner code never re-checks.

use std::fmt;

/// Longest id the contract allows.
pub const MAX_ID_LEN: usize = 128;
/// Deepest path accepted (segments), far beyond any sane data model.
pub const MAX_SEGMENTS: usize = 64;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(pub String);

/// Whether `id` is a valid document or collection id: 1 to 128 chars of
/// `[A-Za-z0-9_.-]`, not `.` or `..`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Input quoted in an error, cut short: a refused 8 KB path should not come back whole.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 64;
        match self.0.char_indices().nth(MAX_CHARS) {
            Some((cut, _)) => write!(f, "{}… ({} bytes)", &self.0[..cut], self.0.len()),
            None => f.write_str(self.0),
        }
    }
}

fn check_segments(path: &str) -> Result<usize, PathError> {
    if path.is_empty() {
        return Err(PathError("path is empty".into()));
    }
    let mut count = 0;
    for segment in path.split('/') {
        count += 1;
        if segment.is_empty() {
            return Err(PathError(format!("path `{}` has an empty segment", Shown(path))));
        }
        if !is_valid_id(segment) {
            return Err(PathError(format!(
                "`{}` in `{}` is not a valid id (1 to {MAX_ID_LEN} chars of A-Z a-z 0-9 _ . -, not `.` or `..`)",
                Shown(segment),
                Shown(path)
            )));
        }
    }
    if count > MAX_SEGMENTS {
        return Err(PathError(format!("path has more than {MAX_SEGMENTS} segments")));
    }
    Ok(count)
}

/// A path to a document: an even number of valid segments (`rooms/r1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocPath(String);

/// A path to a collection: an odd number of valid segments (`rooms/r1/messages`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionPath(String);

/// Either kind of path, for routes that serve both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyPath {
    Doc(DocPath),
    Collection(CollectionPath),
}

impl AnyPath {
    pub fn parse(path: &str) -> Result<AnyPath, PathError> {
        let count = check_segments(path)?;
        Ok(if count % 2 == 0 {
            AnyPath::Doc(DocPath(path.to_owned()))
        } else {
            AnyPath::Collection(CollectionPath(path.to_owned()))
        })
    }
}

impl DocPath {
    pub fn parse(path: &str) -> Result<DocPath, PathError> {
        match AnyPath::parse(path)? {
            AnyPath::Doc(doc) => Ok(doc),
            AnyPath::Collection(_) => {
                Err(PathError(format!("`{}` is a collection path; a document path is expected", Shown(path))))
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The document id (last segment).
    pub fn id(&self) -> &str {
        self.split().1
    }

    /// The path of the collection that holds this document.
    pub fn collection(&self) -> &str {
        self.split().0
    }

    /// The collection that holds this document.
    pub fn collection_path(&self) -> CollectionPath {
        CollectionPath(self.collection().to_owned())
    }

    /// The id of the collection that holds this document (for collection groups).
    pub fn collection_id(&self) -> &str {
        let collection = self.collection();
        collection.rsplit('/').next().unwrap_or(collection)
    }

    fn split(&self) -> (&str, &str) {
        // A DocPath always has at least two segments, so there is a slash.
        self.0.rsplit_once('/').unwrap_or(("", &self.0))
    }
}

impl CollectionPath {
    pub fn parse(path: &str) -> Result<CollectionPath, PathError> {
        match AnyPath::parse(path)? {
            AnyPath::Collection(collection) => Ok(collection),
            AnyPath::Doc(_) => {
                Err(PathError(format!("`{}` is a document path; a collection path is expected", Shown(path))))
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The collection id (last segment), which names its collection group.
    pub fn id(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The path of a document in this collection.
    pub fn doc(&self, id: &str) -> Result<DocPath, PathError> {
        if !is_valid_id(id) {
            return Err(PathError(format!("`{}` is not a valid id", Shown(id))));
        }
        Ok(DocPath(format!("{}/{id}", self.0)))
    }
}

impl fmt::Display for DocPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for CollectionPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fresh server-made id (see [`hearth_types::id::time_ordered_id`]).
pub fn new_id() -> String {
    use rand::Rng;
    let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut rng = rand::rng();
    hearth_types::id::time_ordered_id(millis, || rng.random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_alternate_collections_and_documents() {
        let doc = DocPath::parse("rooms/r1/messages/m1").expect("valid");
        assert_eq!(doc.id(), "m1");
        assert_eq!(doc.collection(), "rooms/r1/messages");
        assert_eq!(doc.collection_id(), "messages");
        let collection = CollectionPath::parse("rooms/r1/messages").expect("valid");
        assert_eq!(collection.id(), "messages");
        assert_eq!(collection.doc("m1").expect("valid"), doc);
        assert!(DocPath::parse("rooms").is_err());
        assert!(CollectionPath::parse("rooms/r1").is_err());
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["", "/", "rooms/", "/rooms", "rooms//r1", "rooms/..", "rooms/.", "ro oms", "rooms/r#1"] {
            assert!(AnyPath::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(AnyPath::parse(&"a".repeat(129)).is_err());
        assert!(AnyPath::parse(&"a".repeat(128)).is_ok());
        assert!(AnyPath::parse("a.b/c-d_e/...").is_ok());
    }

    #[test]
    fn errors_quote_long_input_cut_short() {
        let long = format!("rooms/{}", "é".repeat(5000));
        let message = AnyPath::parse(&long).expect_err("refused").to_string();
        assert!(message.len() < 400, "{message}");
        assert!(message.contains("… (10006 bytes)"), "{message}");
        let short = AnyPath::parse("rooms/r#1").expect_err("refused").to_string();
        assert!(short.starts_with("`r#1` in `rooms/r#1` is not a valid id"), "{short}");
    }

    #[test]
    fn new_ids_are_twenty_alphanumerics_in_creation_order() {
        let id = new_id();
        assert_eq!(id.len(), 20);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(id, new_id());
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(new_id() > id, "later ids sort after earlier ones");
    }
}
