#!/usr/bin/env bash
# Sets up the restricted brain-pipeline deploy user on a server. Run once, as root:
#
#   sudo deploy/install-deploy-user.sh --key ci_deploy_key.pub \
#        --image-repo registry.gitlab.com/acme/brain-pipeline [--user brain-deploy] [--prefix /opt/brain]
#
# It creates:
#   - the user (a system user: no password, no sudo; member of the `docker` group so it can run
#     compose). An existing user is accepted only when it is a system user (uid below UID_MIN)
#     with no password and in no sudo/wheel/admin group; everything is checked before anything changes,
#     and its home is the one the passwd database names,
#   - <prefix>/ (root:<user>, mode 1775: the user may create `current`, but the sticky bit keeps
#     it from replacing the root-owned deploy.sh and deploy.conf),
#   - <prefix>/deploy.sh (root, 755), <prefix>/deploy.conf (root, 644; kept if it exists),
#   - <prefix>/releases, <prefix>/state (user, 755) and <prefix>/env (user, 700) for the env files,
#   - ~/.ssh/authorized_keys (root-owned, so the user cannot add keys) holding the CI public key
#     with a forced command: the key can run <prefix>/deploy.sh and nothing else, with no
#     port, agent or X11 forwarding and no pty, under `env -i` (no variable the client or sshd
#     passes, such as BASH_ENV, reaches bash).
#
# Options:
#   --key FILE          the CI deploy public key (required; `-` reads it from stdin)
#   --image-repo REPO   image repository the deploy may run, e.g. ghcr.io/acme/brain-pipeline
#   --user NAME         default brain-deploy
#   --prefix DIR        default /opt/brain
#   --home DIR          for a new user; default /home/<user> (an existing user keeps its own)
#   --source PATTERNS   restrict the key to these client addresses (authorized_keys from="...")
#   --no-docker-group   do not add the user to the docker group (tests)
#
# Membership of the docker group is root-equivalent on that host. The forced command limits
# what the key can do to "deploy a compose project", but a compose project can mount / and run
# privileged containers: whoever controls the deploy key controls the server as root (see
# docs/deploying.md, "What the deploy key can and cannot do").
set -euo pipefail
umask 022

user=brain-deploy
prefix=/opt/brain
home=
key=
image_repo=
source_patterns=
docker_group=yes
here=$(cd "$(dirname "$0")" && pwd -P)

die() { printf 'install-deploy-user: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --key) key=${2:?}; shift 2 ;;
    --image-repo) image_repo=${2:?}; shift 2 ;;
    --user) user=${2:?}; shift 2 ;;
    --prefix) prefix=${2:?}; shift 2 ;;
    --home) home=${2:?}; shift 2 ;;
    --source) source_patterns=${2:?}; shift 2 ;;
    --no-docker-group) docker_group=no; shift ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) die "unknown option: $1" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "must run as root"
[ -n "$key" ] || die "--key is required"
[[ $user =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "invalid user name"
[[ $prefix =~ ^/[A-Za-z0-9_./-]+$ ]] || die "prefix must be an absolute path of [A-Za-z0-9_./-]"
[ -z "$source_patterns" ] || [[ $source_patterns =~ ^[A-Za-z0-9.:/*?,!-]+$ ]] || die "invalid --source"
[ -z "$image_repo" ] || [[ $image_repo =~ ^[a-z0-9][a-z0-9._/:-]*$ ]] || die "invalid --image-repo"
[ -f "$here/deploy.sh" ] || die "deploy.sh not found next to this script"
bash_bin=$(command -v bash) || die "bash not found"
[ "$docker_group" = no ] || getent group docker >/dev/null || die "no docker group: install Docker first"

# The public key: exactly one line "<type> <base64> [comment]", no options of its own.
if [ "$key" = - ]; then key_line=$(head -n 1); else key_line=$(head -n 1 "$key"); fi
[[ $key_line =~ ^((ssh-(ed25519|rsa))|(ecdsa-sha2-nistp(256|384|521))|(sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh.com))\ [A-Za-z0-9+/]+=*(\ [[:print:]]*)?$ ]] ||
  die "the key must be a single OpenSSH public key line (type base64 [comment])"
ssh-keygen -l -f /dev/stdin <<<"$key_line" >/dev/null 2>&1 || die "ssh-keygen does not accept the key"

# --- the user: everything is checked before anything is changed ------------------------------------
if entry=$(getent passwd "$user"); then
  # An existing account is taken over only when it is a system account nobody logs in to.
  uid=$(cut -d: -f3 <<<"$entry")
  uid_min=$(awk '$1 == "UID_MIN" { print $2 }' /etc/login.defs 2>/dev/null)
  uid_min=${uid_min:-1000}
  [ "$uid" != 0 ] && [ "$uid" -lt "$uid_min" ] || die "$user exists and is not a system user (uid $uid): pick another --user"
  for g in sudo wheel admin root; do
    if id -nG "$user" | tr ' ' '\n' | grep -qx "$g"; then die "$user is in the $g group; it must not have sudo"; fi
  done
  pw=$(getent shadow "$user" | cut -d: -f2)
  case "$pw" in '' | '*' | '!'*) ;; *) die "$user exists and has a password: pick another --user" ;; esac
  existing_home=$(cut -d: -f6 <<<"$entry")
  [ -z "$home" ] || [ "$home" = "$existing_home" ] || die "$user exists with home $existing_home, not $home"
  home=$existing_home
  [[ $home =~ ^/[A-Za-z0-9_./-]+$ ]] || die "the home of $user must be an absolute path of [A-Za-z0-9_./-]"
  [ -d "$home" ] || die "the home of $user ($home) does not exist"
else
  home=${home:-/home/$user}
  [[ $home =~ ^/[A-Za-z0-9_./-]+$ ]] || die "home must be an absolute path of [A-Za-z0-9_./-]"
  mkdir -p "$(dirname "$home")"
  useradd --system --user-group --create-home --home-dir "$home" --shell /bin/sh "$user"
fi
# No usable password, but not "locked" ('!'), which sshd refuses even for key logins without PAM.
usermod -p '*' "$user"
group=$(id -gn "$user")
if [ "$docker_group" = yes ]; then
  usermod -aG docker "$user"
fi

# --- /opt/brain --------------------------------------------------------------------------------
mkdir -p "$prefix"
chown root:"$group" "$prefix"
chmod 1775 "$prefix"
install -o root -g root -m 755 "$here/deploy.sh" "$prefix/deploy.sh"
# deploy.sh sources deploy.conf: one the deploy user could have planted in the group-writable prefix is refused.
if [ -L "$prefix/deploy.conf" ] || { [ -e "$prefix/deploy.conf" ] && [ "$(stat -c %u "$prefix/deploy.conf")" != 0 ]; }; then
  die "$prefix/deploy.conf is a symlink or not owned by root: inspect it and remove it"
fi
if [ ! -f "$prefix/deploy.conf" ]; then
  cat >"$prefix/deploy.conf" <<EOF
# brain-pipeline deploy settings (read by $prefix/deploy.sh; root-owned on purpose).
BRAIN_ROOT=$prefix
BRAIN_IMAGE_REPO=${image_repo:-registry.example.com/CHANGE-ME/brain-pipeline}
COMPOSE_PROJECT=brain
# "docker compose" or "docker-compose"; empty = auto-detect
COMPOSE_CMD=
# Custom health check (sh -c, exit 0 = healthy). Empty = every compose container running/healthy.
HEALTH_CMD=
HEALTH_TIMEOUT=120
KEEP_RELEASES=5
EOF
fi
chown root:root "$prefix/deploy.conf"
chmod 644 "$prefix/deploy.conf"
for d in releases state; do
  install -d -o "$user" -g "$group" -m 755 "$prefix/$d"
done
install -d -o "$user" -g "$group" -m 700 "$prefix/env"

# --- authorized_keys ---------------------------------------------------------------------------
[ -d "$home" ] || install -d -o "$user" -g "$group" -m 750 "$home"
chmod go-w "$home"
install -d -o root -g root -m 755 "$home/.ssh"
# sshd runs the forced command with the user's shell; `env -i` leaves bash nothing but the request.
opts="command=\"/usr/bin/env -i SSH_ORIGINAL_COMMAND=\\\"\$SSH_ORIGINAL_COMMAND\\\" $bash_bin $prefix/deploy.sh\",restrict,no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty,no-user-rc"
[ -z "$source_patterns" ] || opts="from=\"$source_patterns\",$opts"
tmp=$(mktemp "$home/.ssh/.authorized_keys.XXXXXX")
printf '%s %s\n' "$opts" "$key_line" >"$tmp"
chown root:root "$tmp"
chmod 644 "$tmp"
mv -f "$tmp" "$home/.ssh/authorized_keys"

printf 'install-deploy-user: %s can now run only %s/deploy.sh over SSH\n' "$user" "$prefix"
if [ "$docker_group" = yes ]; then
  printf 'install-deploy-user: log it in to the registry once: sudo -u %s -H docker login <registry>\n' "$user"
fi
