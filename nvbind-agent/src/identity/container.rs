//! Which container a cgroup path names. Docker, Podman, containerd and CRI-O all name a
//! container's cgroup after its 64-hexadecimal-digit id:
//!
//! | engine | systemd cgroup driver | cgroupfs driver |
//! |---|---|---|
//! | Docker | `/system.slice/docker-ID.scope` | `/docker/ID` |
//! | Podman | `/machine.slice/libpod-ID.scope` (its processes may sit in a `container` child) | `/libpod_parent/libpod-ID` |
//! | containerd (CRI) | `/kubepods.slice/…/cri-containerd-ID.scope` | `/kubepods/…/pod…/ID` |
//! | CRI-O | `/kubepods.slice/…/crio-ID.scope` | `/kubepods/…/pod…/crio-ID` |
//!
//! Podman and CRI-O also give the container's monitor (conmon) a cgroup named after the id
//! (`libpod-conmon-ID.scope`, `crio-conmon-ID.scope`): that is not the container, and must not be
//! taken for it.

/// The length of a container id, in hexadecimal digits.
pub const CONTAINER_ID_LEN: usize = 64;

/// The container id a cgroup path names: that of its last component naming one (a process in a
/// container's child cgroup is in that container). A conmon cgroup names none.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.rsplit('/').find_map(container_id_of_component)
}

/// The container id one cgroup directory's name holds, if it is a container's own cgroup.
pub fn container_id_of_component(name: &str) -> Option<String> {
    let name = name.strip_suffix(".scope").unwrap_or(name);
    let (prefix, id) = match name.rsplit_once('-') {
        Some((prefix, id)) => (prefix, id),
        None => ("", name),
    };
    if prefix == "conmon" || prefix.ends_with("-conmon") {
        return None;
    }
    is_container_id(id).then(|| id.to_ascii_lowercase())
}

/// 64 hexadecimal digits.
pub fn is_container_id(text: &str) -> bool {
    text.len() == CONTAINER_ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks what a user gave as a container id: hexadecimal, at least 4 digits (as Docker and
/// Podman accept a prefix) and at most a whole id. Returns it in lower case.
pub fn container_id_prefix(text: &str) -> Result<String, String> {
    if text.len() < 4
        || text.len() > CONTAINER_ID_LEN
        || !text.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(format!(
            "{:?} is not a container id: give the hexadecimal id (or its first 4 or more \
             digits) that `podman ps` or `docker ps` shows; names are not resolved (`podman \
             inspect -f '{{{{.Id}}}}' NAME` prints a container's id)",
            super::printable_within(text, 80)
        ));
    }
    Ok(text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn every_engines_layout_names_its_container() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/libpod_parent/libpod-{ID}"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods/burstable/pod6b7e1c2a-1111-2222-3333-444455556666/{ID}"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/crio-{ID}.scope"),
            format!("/kubepods/besteffort/pod1/crio-{ID}"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        let upper = ID.to_ascii_uppercase();
        assert_eq!(
            container_id(&format!("/docker/{upper}")).as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn conmon_and_ordinary_cgroups_name_no_container() {
        for path in [
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/kubepods.slice/crio-conmon-{ID}.scope"),
            "/user.slice/user-1000.slice/session-2.scope".to_string(),
            "/system.slice/docker.service".to_string(),
            "/libpod_parent/conmon".to_string(),
            format!("/docker/{}", &ID[..63]),
            String::new(),
        ] {
            assert_eq!(container_id(&path), None, "{path}");
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(container_id_prefix("ABCD").as_deref(), Ok("abcd"));
        assert_eq!(container_id_prefix(ID).as_deref(), Ok(ID));
        for bad in ["abc", "mygame", "abcd/..", &format!("{ID}0"), ""] {
            let err = container_id_prefix(bad).expect_err(bad);
            assert!(err.contains("is not a container id"), "{err}");
            assert!(err.contains("podman inspect -f '{{.Id}}' NAME"), "{err}");
        }
    }
}
