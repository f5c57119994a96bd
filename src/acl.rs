//! acl: placeholder, owned by its issue.
