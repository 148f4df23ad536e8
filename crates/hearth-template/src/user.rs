//! The image's `User` (`name`, `uid`, `name:group`, `uid:gid`) resolved to numeric ids from the
//! template's own `/etc/passwd` and `/etc/group`, once, when the template is built.

use std::path::{Path, PathBuf};

use crate::unpack::is_whiteout;

/// Why a `User` could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("the image's user {user:?} names {name:?}, which its /etc/{file} does not have")]
    Unknown {
        user: String,
        name: String,
        file: &'static str,
    },
    #[error("the image's user {0:?} maps beyond the 65536 ids a sandbox has")]
    OutOfRange(String),
}

/// Resolves `user` against the layers (bottom first). A numeric uid without a group takes the
/// uid's primary group from passwd, else 0, as Docker does.
pub fn resolve_user(user: &str, layers: &[PathBuf]) -> Result<(u32, u32), UserError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = top_file(layers, "etc/passwd").unwrap_or_default();
    let entry = |field: &str| -> Option<(u32, u32)> {
        passwd.lines().find_map(|line| {
            let cols: Vec<&str> = line.split(':').collect();
            let (name, uid, gid) = (cols.first()?, cols.get(2)?, cols.get(3)?);
            let uid: u32 = uid.parse().ok()?;
            let matches = *name == field || field.parse::<u32>().ok() == Some(uid);
            matches.then(|| Some((uid, gid.parse().ok()?)))?
        })
    };
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        Ok(uid) => (uid, entry(user_part).map_or(0, |(_, gid)| gid)),
        Err(_) => entry(user_part).ok_or_else(|| UserError::Unknown {
            user: user.to_owned(),
            name: user_part.to_owned(),
            file: "passwd",
        })?,
    };
    let gid = match group_part {
        None => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = top_file(layers, "etc/group").unwrap_or_default();
                groups
                    .lines()
                    .find_map(|line| {
                        let cols: Vec<&str> = line.split(':').collect();
                        (cols.first() == Some(&group)).then(|| cols.get(2)?.parse().ok())?
                    })
                    .ok_or_else(|| UserError::Unknown {
                        user: user.to_owned(),
                        name: group.to_owned(),
                        file: "group",
                    })?
            }
        },
    };
    if uid >= 65_536 || gid >= 65_536 {
        return Err(UserError::OutOfRange(user.to_owned()));
    }
    Ok((uid, gid))
}

/// The file at `rel` as the merged layers show it: the topmost layer that has it (a whiteout
/// there, or none at all, means no file). Small files only.
fn top_file(layers: &[PathBuf], rel: &str) -> Option<String> {
    for layer in layers.iter().rev() {
        let path: &Path = &layer.join(rel);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if is_whiteout(&meta) => return None,
            Ok(meta) if meta.is_file() && meta.len() < (4 << 20) => {
                return std::fs::read_to_string(path).ok()
            }
            Ok(_) => return None,
            Err(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_name_number_and_group() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnode:x:1000:1001::/home/node:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = vec![dir.path().to_owned()];
        assert_eq!(resolve_user("node", &layers), Ok((1000, 1001)));
        assert_eq!(resolve_user("1000", &layers), Ok((1000, 1001)));
        assert_eq!(resolve_user("4242", &layers), Ok((4242, 0)));
        assert_eq!(resolve_user("node:staff", &layers), Ok((1000, 50)));
        assert_eq!(resolve_user("1000:7", &layers), Ok((1000, 7)));
        assert!(matches!(
            resolve_user("ghost", &layers),
            Err(UserError::Unknown { .. })
        ));
        assert!(matches!(
            resolve_user("node:ghosts", &layers),
            Err(UserError::Unknown { .. })
        ));
        assert!(matches!(
            resolve_user("70000", &layers),
            Err(UserError::OutOfRange(_))
        ));
    }
}
