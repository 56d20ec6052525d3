//! The unprivileged user the lab runs containers as.

/// Environment variable naming the test user.
pub const USER_ENV: &str = "U7S_TEST_USER";
pub const DEFAULT_USER: &str = "u7s-test";
/// The users of the multi-host lab's hosts, one each (created by
/// `init-host/init-host.root.sh`); no other test runs as them, so what is
/// left of them after a lab is what the lab leaked.
pub const HOST_USERS: [&str; 3] = ["u7s-host-a", "u7s-host-b", "u7s-host-c"];

#[derive(Debug, Clone)]
pub struct LabUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl LabUser {
    pub fn from_env() -> Result<Self, String> {
        Self::named(&std::env::var(USER_ENV).unwrap_or_else(|_| DEFAULT_USER.to_owned()))
    }

    /// The unprivileged user `name` from /etc/passwd.
    pub fn named(name: &str) -> Result<Self, String> {
        let name = name.to_owned();
        let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
        let user = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && f[0] == name)
            .ok_or_else(|| format!("test user {name:?} does not exist"))?;
        let uid: u32 = user[2].parse().map_err(|_| format!("bad uid for {name}"))?;
        let gid: u32 = user[3].parse().map_err(|_| format!("bad gid for {name}"))?;
        if uid == 0 {
            return Err(format!("test user {name:?} must not be root"));
        }
        Ok(Self { name, uid, gid })
    }
}
