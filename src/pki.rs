//! pki: placeholder, owned by its issue.
