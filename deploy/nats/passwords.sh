#!/bin/sh
# The NATS users' passwords of the compose stack, kept in the `nats-secrets` volume (one file per user).
#
#   sh /etc/nats/passwords.sh start --config ...   the `nats` service's entrypoint: makes the passwords, then
#                                                  runs nats-server with them in its environment
#   sh /etc/nats/passwords.sh show [user]          prints "user password" lines (or one user's password):
#       docker compose exec nats sh /etc/nats/passwords.sh show operator
#
# At each start, a user's password is NATS_<USER>_PASS when the environment (compose's .env) sets it, else the one
# kept in the volume, else a new random one (generated on the first start, then kept). No password is well known:
# a value still holding a `change-me` placeholder of .env.example is refused, and nats-server does not start.
#
# Each service reads only its own file (NATS_PASS_FILE): files are mode 400, the scheduler's owned by uid 1000 (the
# image's `node` user it runs as), admin's by uid 1001 (the `setup` service's user), web's by uid 1002 (the `web`
# service's user), every other one by root. The four services that run as root hold the Docker socket, which is root
# on the host anyway.
set -eu

dir=/run/brain-secrets
# user:variable:owner uid
users="admin:NATS_ADMIN_PASS:1001 scheduler:NATS_SCHEDULER_PASS:1000 transformer:NATS_TRANSFORMER_PASS:0
loader:NATS_LOADER_PASS:0 model-gate:NATS_MODEL_GATE_PASS:0 trainer:NATS_TRAINER_PASS:0
monitor:NATS_MONITOR_PASS:0 operator:NATS_OPERATOR_PASS:0 web:NATS_WEB_PASS:1002"

die() {
  echo "passwords.sh: $*" >&2
  exit 1
}

case "${1-}" in
  start)
    shift
    umask 077
    mkdir -p "$dir"
    chmod 755 "$dir"
    for entry in $users; do
      user=${entry%%:*}
      rest=${entry#*:}
      var=${rest%%:*}
      owner=${rest#*:}
      eval "value=\${$var:-}"
      if [ -n "$value" ]; then
        source="the environment"
      elif [ -s "$dir/$user" ]; then
        value=$(head -n 1 "$dir/$user")
        source="the volume"
      else
        # 128 random bits; the leading letter keeps nats-server from reading the value as a number.
        value=p$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
        source="a new random value"
      fi
      case "$value" in
        *[Cc][Hh][Aa][Nn][Gg][Ee]-[Mm][Ee]*) die "$var still holds a placeholder from .env.example: set a real password or remove it (one is generated)" ;;
      esac
      # nats-server parses an interpolated value as a config value: a letter first, then letters, digits, - and _.
      case "$value" in
        [A-Za-z]*) ;;
        *) die "$var must start with a letter" ;;
      esac
      case "$value" in
        *[!A-Za-z0-9_-]*) die "$var may hold only letters, digits, - and _" ;;
      esac
      printf '%s\n' "$value" >"$dir/$user.tmp"
      chown "$owner:$owner" "$dir/$user.tmp"
      chmod 400 "$dir/$user.tmp"
      mv -f "$dir/$user.tmp" "$dir/$user"
      export "$var=$value"
      echo "passwords.sh: $user: password from $source" >&2
    done
    exec nats-server "$@"
    ;;
  show)
    for entry in $users; do
      user=${entry%%:*}
      [ -z "${2-}" ] || [ "$2" = "$user" ] || continue
      [ -s "$dir/$user" ] || die "no password for $user yet (has the nats service started?)"
      if [ -n "${2-}" ]; then cat "$dir/$user"; else printf '%s %s\n' "$user" "$(cat "$dir/$user")"; fi
      found=yes
    done
    [ -n "${found-}" ] || die "no such user: $2"
    ;;
  *) die "usage: passwords.sh start <nats-server arguments> | show [user]" ;;
esac
