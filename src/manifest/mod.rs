//! manifest: placeholder, owned by its issue.
