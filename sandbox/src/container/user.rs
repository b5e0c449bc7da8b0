//! Resolving a container's user: the CRI `run_as_*` fields or the image's `User`, looked up in
//! the image's `/etc/passwd` and `/etc/group`, read from the layer directories (top layer
//! first, honouring whiteouts, never following symlinks out of the image).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::{SandboxError, invalid};

/// The largest uid/gid crid accepts (user namespaces are not used; Kubernetes refuses more).
pub const MAX_ID: i64 = i32::MAX as i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub username: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Reads `rel` (e.g. `etc/passwd`) as the merged image would show it: the topmost layer that has
/// the path decides; a whiteout or anything but a regular file means absent. Directories on the
/// way must be real directories in that layer (a symlinked `/etc` is not followed).
pub fn read_image_file(layers_bottom_first: &[PathBuf], rel: &str) -> Option<String> {
    for layer in layers_bottom_first.iter().rev() {
        let mut dir = layer.clone();
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        let (file, dirs) = parts.split_last()?;
        let mut blocked = false;
        for d in dirs {
            dir.push(d);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    // A file, whiteout or symlink replaces the directory from here down.
                    blocked = true;
                    break;
                }
                Err(_) => {
                    blocked = false;
                    dir = PathBuf::new();
                    break;
                }
            }
        }
        if blocked {
            return None;
        }
        if dir.as_os_str().is_empty() {
            continue;
        }
        let path = dir.join(file);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {
                return read_limited(&path);
            }
            Ok(m) if m.file_type().is_char_device() => return None,
            Ok(_) => return None,
            Err(_) => {
                // An opaque directory hides the layers below.
                if is_opaque(&dir) {
                    return None;
                }
            }
        }
    }
    None
}

/// Whether a layer's directory hides the layers below: the opaque attribute crid's unpacking
/// sets, or the OCI `.wh..wh..opq` marker a layer unpacked by other means may keep.
fn is_opaque(dir: &Path) -> bool {
    imagestore::unpack::is_opaque(dir) || dir.join(".wh..wh..opq").exists()
}

fn read_limited(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    f.take(4 * 1024 * 1024).read_to_string(&mut s).ok()?;
    Some(s)
}

fn check_id(what: &str, v: i64) -> Result<u32, SandboxError> {
    if !(0..=MAX_ID).contains(&v) {
        return Err(invalid(format!("{what} {v} is out of range 0..={MAX_ID}")));
    }
    Ok(v as u32)
}

fn parse_id(what: &str, s: &str) -> Result<Option<u32>, SandboxError> {
    match s.parse::<i64>() {
        Ok(v) => check_id(what, v).map(Some),
        Err(_) if s.chars().all(|c| c.is_ascii_digit()) => {
            Err(invalid(format!("{what} {s} is out of range")))
        }
        Err(_) => Ok(None),
    }
}

/// [`resolve`] for a container: its security context over the image's `User`.
pub fn resolve_for(
    security: &super::config::SecurityContext,
    image_user: Option<&str>,
    layers: &[PathBuf],
) -> Result<ResolvedUser, SandboxError> {
    resolve(
        image_user.unwrap_or(""),
        security.run_as_user,
        &security.run_as_username,
        security.run_as_group,
        &security.supplemental_groups,
        security.supplemental_groups_strict,
        layers,
    )
}

/// Resolves the user: `run_as_user`/`run_as_username`/`run_as_group` win over the image's
/// `User` (`user`, `uid`, `user:group`, `uid:gid`). The additional groups are the user's groups
/// in the image's `/etc/group` (unless `strict`: CRI `SupplementalGroupsPolicy` Strict) and
/// `supplemental`.
pub fn resolve(
    image_user: &str,
    run_as_user: Option<i64>,
    run_as_username: &str,
    run_as_group: Option<i64>,
    supplemental: &[i64],
    strict: bool,
    layers: &[PathBuf],
) -> Result<ResolvedUser, SandboxError> {
    let (mut user_part, mut group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
        None => (image_user.to_owned(), None),
    };
    if let Some(uid) = run_as_user {
        check_id("run_as_user", uid)?;
        user_part = uid.to_string();
        group_part = None;
    } else if !run_as_username.is_empty() {
        user_part = run_as_username.to_owned();
        group_part = None;
    }
    if let Some(gid) = run_as_group {
        check_id("run_as_group", gid)?;
        group_part = Some(gid.to_string());
    }
    let passwd = read_image_file(layers, "etc/passwd")
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let groups = read_image_file(layers, "etc/group")
        .map(|t| parse_group(&t))
        .unwrap_or_default();

    let (uid, mut gid, username) = if user_part.is_empty() {
        let root = passwd.iter().find(|p| p.uid == 0);
        (0, root.map_or(0, |p| p.gid), root.map(|p| p.name.clone()))
    } else if let Some(uid) = parse_id("uid", &user_part)? {
        let entry = passwd.iter().find(|p| p.uid == uid);
        (
            uid,
            entry.map_or(0, |p| p.gid),
            entry.map(|p| p.name.clone()),
        )
    } else {
        let entry = passwd.iter().find(|p| p.name == user_part).ok_or_else(|| {
            invalid(format!(
                "user {user_part:?} is not in the image's /etc/passwd"
            ))
        })?;
        check_id("uid", i64::from(entry.uid))?;
        (entry.uid, entry.gid, Some(entry.name.clone()))
    };
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match parse_id("gid", &g)? {
            Some(gid) => gid,
            None => {
                groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| {
                        invalid(format!("group {g:?} is not in the image's /etc/group"))
                    })?
                    .gid
            }
        };
    }
    check_id("gid", i64::from(gid))?;
    let mut additional = Vec::new();
    if let Some(name) = username.as_ref().filter(|_| !strict) {
        for g in &groups {
            if g.members.iter().any(|m| m == name) && g.gid != gid && !additional.contains(&g.gid) {
                additional.push(g.gid);
            }
        }
    }
    for g in supplemental {
        let g = check_id("supplemental group", *g)?;
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        username,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> (tempfile::TempDir, Vec<PathBuf>) {
        let d = tempfile::tempdir().unwrap();
        let lower = d.path().join("l0");
        let upper = d.path().join("l1");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(lower.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(
            upper.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            lower.join("etc/group"),
            "root:x:0:\nwww:x:34:\nextra:x:1000:www,other\nstaff:x:50:\n",
        )
        .unwrap();
        (d, vec![lower, upper])
    }

    #[test]
    fn names_resolve_through_the_top_layer() {
        let (_d, layers) = image();
        let u = resolve("www", None, "", None, &[], false, &layers).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (33, 34, vec![1000]));
        let u = resolve("www:staff", None, "", None, &[7], false, &layers).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (33, 50, vec![1000, 7]));
        // SupplementalGroupsPolicy Strict: only the groups asked for, not the image's.
        let u = resolve("www:staff", None, "", None, &[7], true, &layers).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (33, 50, vec![7]));
        let u = resolve("", None, "", None, &[], false, &layers).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        let u = resolve("1234:5", None, "", None, &[], false, &layers).unwrap();
        assert_eq!((u.uid, u.gid), (1234, 5));
    }

    #[test]
    fn cri_fields_override_the_image() {
        let (_d, layers) = image();
        let u = resolve("www", Some(1001), "", Some(2002), &[], false, &layers).unwrap();
        assert_eq!((u.uid, u.gid), (1001, 2002));
        let u = resolve("", None, "www", None, &[], false, &layers).unwrap();
        assert_eq!((u.uid, u.gid), (33, 34));
    }

    #[test]
    fn bad_users_are_refused() {
        let (_d, layers) = image();
        for (user, run_as) in [
            ("nobody-here", None),
            ("", Some(1i64 << 31)),
            ("", Some(-1)),
            ("4294967296", None),
            ("2147483648", None),
        ] {
            let e = resolve(user, run_as, "", None, &[], false, &layers).unwrap_err();
            assert_eq!(
                e.kind(),
                imagestore::ErrorKind::InvalidArgument,
                "{user} {run_as:?}"
            );
        }
    }

    #[test]
    fn whiteouts_and_symlinks_hide_files() {
        let (d, mut layers) = image();
        let top = d.path().join("l2");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        nix::sys::stat::mknod(
            &top.join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        layers.push(top);
        assert_eq!(read_image_file(&layers, "etc/passwd"), None);
        let link = d.path().join("l3");
        std::fs::create_dir_all(&link).unwrap();
        std::os::unix::fs::symlink("/etc", link.join("etc")).unwrap();
        layers.push(link);
        assert_eq!(read_image_file(&layers, "etc/group"), None);
    }

    /// A layer whose `/etc` is opaque (as unpacking marks `.wh..wh..opq`) hides the lower
    /// layers' `/etc/passwd` and `/etc/group`: a user named only there is unknown, as in the
    /// container.
    #[test]
    fn an_opaque_directory_hides_the_layers_below() {
        let (d, mut layers) = image();
        let etc = d.path().join("l2/etc");
        std::fs::create_dir_all(&etc).unwrap();
        let marked = ["trusted.overlay.opaque", "user.overlay.opaque"]
            .iter()
            .any(|a| {
                rustix::fs::lsetxattr(&etc, *a, b"y", rustix::fs::XattrFlags::empty()).is_ok()
            });
        assert!(
            marked,
            "no opaque attribute could be set on {}",
            etc.display()
        );
        layers.push(d.path().join("l2"));
        assert_eq!(read_image_file(&layers, "etc/passwd"), None);
        assert_eq!(read_image_file(&layers, "etc/group"), None);
        let e = resolve("www", None, "", None, &[], false, &layers).unwrap_err();
        assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument);
    }
}
