//! The host's distribution family (from /etc/os-release), so that a fix names the package and
//! the command an admin of that family uses.

/// The families clusters run, by their package tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Debian, Ubuntu and derivatives: apt.
    Debian,
    /// RHEL, Rocky, Alma, CentOS, Fedora: dnf.
    RedHat,
    /// SLES, openSUSE: zypper.
    Suse,
    /// Anything else: every family's package is named.
    Other,
}

/// What a fix needs to know of the host's distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distro {
    pub family: Family,
    /// Ubuntu restricts unprivileged user namespaces with AppArmor (24.04 and later).
    pub ubuntu: bool,
}

impl Distro {
    /// This host's, from /etc/os-release (or /usr/lib/os-release).
    pub fn of_host() -> Distro {
        let text = std::fs::read_to_string("/etc/os-release")
            .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
            .unwrap_or_default();
        Distro::parse(&text)
    }

    /// From os-release's text: `ID`, then `ID_LIKE`, decide the family.
    pub fn parse(os_release: &str) -> Distro {
        let field = |key: &str| {
            os_release
                .lines()
                .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().trim_matches(['"', '\'']).to_ascii_lowercase())
                .unwrap_or_default()
        };
        let (id, like) = (field("ID"), field("ID_LIKE"));
        let names: Vec<&str> = id
            .split_whitespace()
            .chain(like.split_whitespace())
            .collect();
        let any = |of: &[&str]| names.iter().any(|n| of.contains(n));
        let family = if any(&["debian", "ubuntu"]) {
            Family::Debian
        } else if any(&["rhel", "fedora", "centos", "rocky", "almalinux"]) {
            Family::RedHat
        } else if any(&[
            "suse",
            "sles",
            "opensuse",
            "opensuse-leap",
            "opensuse-tumbleweed",
        ]) {
            Family::Suse
        } else {
            Family::Other
        };
        Distro {
            family,
            ubuntu: id == "ubuntu" || like.split_whitespace().any(|n| n == "ubuntu"),
        }
    }

    /// How an admin of this host installs what provides `tool`.
    pub fn install(&self, tool: &str) -> String {
        let [debian, redhat, suse] = packages(tool);
        match self.family {
            Family::Debian => format!("apt install {debian}"),
            Family::RedHat => format!("dnf install {redhat}"),
            Family::Suse => format!("zypper install {suse}"),
            Family::Other => format!(
                "Debian/Ubuntu: apt install {debian}; RHEL/Rocky/Alma/Fedora: dnf install \
                 {redhat}; SLES/openSUSE: zypper install {suse}"
            ),
        }
    }
}

/// The package with `tool` on Debian/Ubuntu, RHEL-family and SUSE. Docker itself comes from
/// Docker's own repository on RHEL (download.docker.com), where the distribution has none.
fn packages(tool: &str) -> [&'static str; 3] {
    match tool {
        "rootlesskit" => [
            "rootlesskit",
            "docker-ce-rootless-extras (Docker's repository)",
            "rootlesskit",
        ],
        "slirp4netns" => ["slirp4netns"; 3],
        "containerd" => [
            "containerd",
            "containerd.io (Docker's repository)",
            "containerd",
        ],
        "runc" => ["runc"; 3],
        "newuidmap" | "newgidmap" | "getsubids" => ["uidmap", "shadow-utils", "shadow"],
        "nft" => ["nftables"; 3],
        "nsenter" => ["util-linux"; 3],
        "ip" => ["iproute2", "iproute", "iproute2"],
        _ => ["docker.io", "docker-ce (Docker's repository)", "docker"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_from_os_release() {
        let rocky = "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n";
        assert_eq!(Distro::parse(rocky).family, Family::RedHat);
        let ubuntu = "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n";
        assert_eq!(
            Distro::parse(ubuntu),
            Distro {
                family: Family::Debian,
                ubuntu: true
            }
        );
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            Distro::parse(debian),
            Distro {
                family: Family::Debian,
                ubuntu: false
            }
        );
        let sles = "NAME=\"SLES\"\nVERSION_ID=\"15.5\"\nID=\"sles\"\nID_LIKE=\"suse\"\n";
        assert_eq!(Distro::parse(sles).family, Family::Suse);
        let leap = "ID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n";
        assert_eq!(Distro::parse(leap).family, Family::Suse);
        assert_eq!(Distro::parse("ID=fedora\n").family, Family::RedHat);
        assert_eq!(
            Distro::parse("ID=almalinux\nID_LIKE=\"rhel centos fedora\"\n").family,
            Family::RedHat
        );
        // `VERSION_ID` must not be read as `ID`.
        assert_eq!(Distro::parse("VERSION_ID=debian\n").family, Family::Other);
        assert_eq!(Distro::parse("").family, Family::Other);
    }

    #[test]
    fn fixes_name_the_familys_package() {
        let of = |family| Distro {
            family,
            ubuntu: false,
        };
        assert_eq!(of(Family::Debian).install("ip"), "apt install iproute2");
        assert_eq!(of(Family::RedHat).install("ip"), "dnf install iproute");
        assert_eq!(
            of(Family::Suse).install("nsenter"),
            "zypper install util-linux"
        );
        assert_eq!(
            of(Family::RedHat).install("newuidmap"),
            "dnf install shadow-utils"
        );
        let any = of(Family::Other).install("newuidmap");
        assert!(
            any.contains("apt install uidmap") && any.contains("zypper install shadow"),
            "{any}"
        );
    }
}
