//! Card files under a name the appliance does not read. A PC saves `moat.yaml` as
//! `moat.yaml.txt` when Notepad's "Save as type" is left at "Text Documents", and
//! Windows hides the `.txt` it added; people also type `moat.yml`. Without this,
//! first boot acts as if the card held nothing. Found by name only, so first boot
//! can say which file to rename; it reads no file's contents and renames nothing.

use std::fmt;
use std::io;
use std::path::Path;

use super::{CARD_MANIFEST, CARD_WIFI};

/// A card file whose name is a near miss of one the appliance reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misnamed {
    /// The name on the card.
    pub found: String,
    /// The name it was meant to have.
    pub wanted: &'static str,
}

impl fmt::Display for Misnamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on the card was not read: rename it to {} (Windows hides an extension it \
             added, such as .txt; Explorer's View > File name extensions shows it)",
            self.found, self.wanted
        )
    }
}

/// What `name` was meant to be, if it is a near miss of a card file: the name in
/// any case, with a `.txt` or spaces added, with `.yml` for `.yaml`, or without its
/// extension. The exact name in another case is no miss: the FAT driver finds it
/// anyway.
fn meant(name: &str) -> Option<&'static str> {
    let lower = name.to_lowercase();
    let trimmed = lower.trim();
    let base = trimmed.strip_suffix(".txt").unwrap_or(trimmed).trim_end();
    let wanted = match base {
        "moat.yaml" | "moat.yml" | "moat" => CARD_MANIFEST,
        "wpa_supplicant.conf" | "wpa_supplicant" => CARD_WIFI,
        _ => return None,
    };
    (lower != wanted).then_some(wanted)
}

/// The near misses among the card's top-level files, sorted by name. A card that is
/// not there has none.
pub fn misnamed(boot: &Path) -> io::Result<Vec<Misnamed>> {
    let entries = match std::fs::read_dir(boot) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(wanted) = meant(&name) {
            found.push(Misnamed {
                found: name,
                wanted,
            });
        }
    }
    found.sort_by(|a, b| a.found.cmp(&b.found));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_name_the_file_they_were_meant_to_be() {
        for (name, wanted) in [
            ("moat.yaml.txt", Some("moat.yaml")),
            ("moat.yml", Some("moat.yaml")),
            ("Moat.YML.txt", Some("moat.yaml")),
            ("moat.txt", Some("moat.yaml")),
            ("moat", Some("moat.yaml")),
            ("moat.yaml ", Some("moat.yaml")),
            ("wpa_supplicant.conf.txt", Some("wpa_supplicant.conf")),
            ("wpa_supplicant.txt", Some("wpa_supplicant.conf")),
            // The right names, in any case, and the card's other files.
            ("moat.yaml", None),
            ("MOAT.YAML", None),
            ("wpa_supplicant.conf", None),
            ("moat-setup.txt", None),
            ("moat-error.txt", None),
            ("moat-ca.pem", None),
            ("moat-backup.tar", None),
            ("config.txt", None),
            ("moat.yaml.bak", None),
        ] {
            assert_eq!(meant(name), wanted, "{name:?}");
        }
    }

    #[test]
    fn only_files_on_the_card_are_listed_in_name_order() {
        let card = tempfile::tempdir().unwrap();
        for name in ["wpa_supplicant.conf.txt", "moat.yaml.txt", "moat-ca.pem"] {
            std::fs::write(card.path().join(name), "x").unwrap();
        }
        std::fs::create_dir(card.path().join("moat.yml")).unwrap();
        let found = misnamed(card.path()).unwrap();
        assert_eq!(
            found,
            [
                Misnamed {
                    found: "moat.yaml.txt".into(),
                    wanted: "moat.yaml"
                },
                Misnamed {
                    found: "wpa_supplicant.conf.txt".into(),
                    wanted: "wpa_supplicant.conf"
                },
            ]
        );
        assert!(found[0].to_string().contains("rename it to moat.yaml"));
        assert!(misnamed(&card.path().join("absent")).unwrap().is_empty());
    }
}
