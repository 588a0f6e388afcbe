# Shared by the maintainer scripts of cyxcloud-node and cyxcloud-server (inlined at build time
# where @SYSTEM_USER@ stands): the system user the daemons run as, and the group that may read
# their configuration.
cyx_system_user() {
  getent group cyxcloud >/dev/null || groupadd --system cyxcloud
  getent passwd cyxcloud >/dev/null ||
    useradd --system --gid cyxcloud --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin --comment "CyxCloud daemons" cyxcloud
}

# Whether systemd runs this machine (not in a plain container or chroot).
cyx_systemd() { [ -d /run/systemd/system ]; }
