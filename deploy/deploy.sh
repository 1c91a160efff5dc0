#!/usr/bin/env bash
# brain-pipeline server-side deploy command.
#
# Installed as /opt/brain/deploy.sh and run ONLY through a forced command in the deploy user's
# authorized_keys (see deploy/install-deploy-user.sh):
#
#   command="/opt/brain/deploy.sh",restrict,no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty ssh-ed25519 AAAA... ci
#
# The client's requested command arrives in SSH_ORIGINAL_COMMAND and must be one of:
#
#   deploy <tag>     stdin: a tar stream of the release files (compose file, nats config, ...).
#                    Unpacks into releases/<id>, pulls, switches `current` atomically, runs
#                    `compose up -d --remove-orphans` with BRAIN_IMAGE=<BRAIN_IMAGE_REPO>:<tag>,
#                    health-checks, and rolls back to the previous release and tag on failure.
#   secrets <name>   stdin: the content of a dotenv file; written to env/<name> (mode 600).
#                    <name> is `.env` (compose's variables) or looks like `transform.env`.
#                    Values are never printed. The next deploy copies env/*.env into its release's
#                    env/ (over the repo's templates) and env/.env to its .env (mode 600), so a
#                    rollback also restores the secrets the previous release ran with.
#   rollback         re-deploys the previous release and tag.
#   status           prints the current and previous tags and `compose ps`.
#
# Anything else is refused with exit status 2. Exit status 1 means the deploy failed (and was
# rolled back if a previous release existed); 3 means the rollback failed as well.
#
# Settings come from a root-owned config file (default: deploy.conf next to this script,
# or $BRAIN_DEPLOY_CONF), a shell fragment of KEY=VALUE lines:
#
#   BRAIN_ROOT=/opt/brain                       releases/, current, env/, state/ live here
#   BRAIN_IMAGE_REPO=registry.example.com/group/brain-pipeline   image repository (the client only picks the tag)
#   COMPOSE_PROJECT=brain                       compose project name (stable across releases)
#   COMPOSE_CMD="docker compose"                or "docker-compose"; auto-detected when empty
#   DOCKER_CMD=docker                           used by the default health check
#   HEALTH_CMD=                                 custom health check (run with sh -c, exit 0 = healthy);
#                                               empty = wait until every compose container is healthy
#   HEALTH_TIMEOUT=120                          seconds
#   PULL=yes                                    no: skip `compose pull` (images built or loaded on the server)
#   KEEP_RELEASES=5                             older release directories are pruned
#   MAX_RELEASE_BYTES=52428800                  upper bound on the release tarball
#
# Never add `set -x` here: the secrets action reads secret values.
set -euo pipefail
# Release files must stay readable by containers that bind-mount them; env files get 077 below.
umask 022
export LC_ALL=C

die() { # <exit status> <message>
  printf 'deploy: %s\n' "$2" >&2
  exit "$1"
}
log() { printf 'deploy: %s\n' "$*" >&2; }

# --- configuration -----------------------------------------------------------------------------
script_dir=$(cd "$(dirname "$0")" && pwd -P)
conf=${BRAIN_DEPLOY_CONF:-$script_dir/deploy.conf}
BRAIN_ROOT=$script_dir
BRAIN_IMAGE_REPO=
COMPOSE_PROJECT=brain
COMPOSE_CMD=
DOCKER_CMD=docker
HEALTH_CMD=
HEALTH_TIMEOUT=120
PULL=yes
KEEP_RELEASES=5
MAX_RELEASE_BYTES=52428800
if [ -f "$conf" ]; then
  # shellcheck source=/dev/null
  . "$conf"
fi
[ -n "$BRAIN_IMAGE_REPO" ] || die 2 "BRAIN_IMAGE_REPO is not set in $conf"
[[ $HEALTH_TIMEOUT =~ ^[0-9]+$ ]] || die 2 "HEALTH_TIMEOUT must be a number of seconds"
[[ $KEEP_RELEASES =~ ^[0-9]+$ ]] || die 2 "KEEP_RELEASES must be a number"

releases=$BRAIN_ROOT/releases
current=$BRAIN_ROOT/current
env_dir=$BRAIN_ROOT/env
state=$BRAIN_ROOT/state

# --- the requested command ---------------------------------------------------------------------
request=${SSH_ORIGINAL_COMMAND-}
[ -n "$request" ] || die 2 "interactive logins are not allowed; usage: deploy <tag> | secrets <name> | rollback | status"
# Exactly one or two words of a restricted alphabet: no quoting, globbing or shell syntax gets in.
[[ $request =~ ^([a-z]+)(\ ([A-Za-z0-9_.-]+))?$ ]] || die 2 "refused: not an allowed command"
action=${BASH_REMATCH[1]}
arg=${BASH_REMATCH[3]-}

# --- helpers -----------------------------------------------------------------------------------
mkdir -p "$releases" "$state"
[ -d "$env_dir" ] || (umask 077 && mkdir -p "$env_dir")
BRAIN_ROOT=$(cd "$BRAIN_ROOT" && pwd -P)
releases=$BRAIN_ROOT/releases
current=$BRAIN_ROOT/current
env_dir=$BRAIN_ROOT/env
state=$BRAIN_ROOT/state

record() { printf '%s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" >>"$state/history" || true; }

lock() {
  exec 9>"$state/lock"
  flock -w 600 9 || die 1 "another deploy is still running"
}

# Prints the compose file of a release directory.
compose_file() {
  local f
  for f in compose.yaml compose.yml docker-compose.yml docker-compose.yaml; do
    if [ -f "$1/$f" ]; then
      printf '%s\n' "$1/$f"
      return 0
    fi
  done
  return 1
}

detect_compose() {
  [ -z "$COMPOSE_CMD" ] || return 0
  if docker compose version >/dev/null 2>&1; then
    COMPOSE_CMD="docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE_CMD=docker-compose
  else
    die 1 "neither 'docker compose' nor 'docker-compose' is available"
  fi
}

# compose <release dir> <tag> <compose args...>
compose() {
  local dir=$1 tag=$2 file
  shift 2
  detect_compose
  file=$(compose_file "$dir") || die 1 "no compose file in $dir"
  # COMPOSE_CMD is a command line ("docker compose"), so word splitting is intended.
  # shellcheck disable=SC2086
  (cd "$dir" &&
    BRAIN_IMAGE="$BRAIN_IMAGE_REPO:$tag" BRAIN_ENV_DIR="$dir/env" COMPOSE_PROJECT_NAME="$COMPOSE_PROJECT" \
      $COMPOSE_CMD -p "$COMPOSE_PROJECT" --project-directory "$dir" -f "$file" "$@")
}

release_tag() { # <release dir>: prints the tag recorded in it
  sed -n 's/^TAG=//p' "$1/.brain-release" 2>/dev/null | head -n 1
}

current_release() { # prints the release directory `current` points to, if any
  [ -L "$current" ] || return 0
  readlink -f "$current" || true
}

previous_release() { # prints the release directory recorded as previous, if any
  [ -L "$state/previous" ] || return 0
  readlink -f "$state/previous" || true
}

switch_current() { # atomically points `current` at <release dir>
  local tmp="$BRAIN_ROOT/.current.$$"
  ln -sfn "releases/$(basename "$1")" "$tmp"
  mv -Tf "$tmp" "$current"
}

# Default health check: every container of the project is running and, when it defines a
# healthcheck, healthy (a container that exited with status 0, e.g. a one-shot init, also passes).
default_health() { # <release dir> <tag>
  local ids line bad=0 name status code health
  ids=$(compose "$1" "$2" ps -a -q) || return 1
  [ -n "$ids" ] || { log "health: no containers"; return 1; }
  # shellcheck disable=SC2086
  while read -r name status code health; do
    case "$status:$health" in
      running:healthy | running:none) ;;
      exited:*) [ "$code" = 0 ] || { log "health: $name exited with $code"; return 2; } ;;
      *:unhealthy) log "health: $name is unhealthy"; return 2 ;;
      *) bad=1 ;;
    esac
  done < <($DOCKER_CMD inspect --format '{{.Name}} {{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $ids)
  [ "$bad" = 0 ]
}

health_check() { # <release dir> <tag>
  local deadline rc
  deadline=$(($(date +%s) + HEALTH_TIMEOUT))
  while :; do
    if [ -n "$HEALTH_CMD" ]; then
      rc=0
      (cd "$1" && BRAIN_IMAGE="$BRAIN_IMAGE_REPO:$2" BRAIN_TAG="$2" BRAIN_RELEASE_DIR="$1" \
        BRAIN_ENV_DIR="$1/env" COMPOSE_PROJECT_NAME="$COMPOSE_PROJECT" sh -c "$HEALTH_CMD") || rc=$?
    else
      rc=0
      default_health "$1" "$2" || rc=$?
    fi
    [ "$rc" = 0 ] && return 0
    [ "$rc" = 2 ] && [ -z "$HEALTH_CMD" ] && return 1
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 2
  done
}

prune_releases() {
  local keep=$KEEP_RELEASES cur prev dir n=0
  cur=$(current_release)
  prev=$(previous_release)
  # Newest first (release ids start with a UTC timestamp).
  while IFS= read -r dir; do
    n=$((n + 1))
    [ "$n" -le "$keep" ] && continue
    if [ "$releases/$dir" = "$cur" ] || [ "$releases/$dir" = "$prev" ]; then continue; fi
    rm -rf -- "${releases:?}/$dir"
  done < <(find "$releases" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -r)
}

# Brings up <release dir> with <tag>; on failure rolls back to <previous dir> (may be empty).
activate() { # <new dir> <tag> <previous dir>
  local new=$1 tag=$2 prev=$3 prev_tag=
  [ -n "$prev" ] && prev_tag=$(release_tag "$prev")
  switch_current "$new"
  log "starting $BRAIN_IMAGE_REPO:$tag (release $(basename "$new"))"
  if compose "$new" "$tag" up -d --remove-orphans && health_check "$new" "$tag"; then
    if [ -n "$prev" ] && [ "$prev" != "$new" ]; then
      ln -sfn "../releases/$(basename "$prev")" "$state/previous"
      printf '%s\n' "$prev_tag" >"$state/previous_tag"
    fi
    printf '%s\n' "$tag" >"$state/current_tag"
    record "$tag" deployed
    log "deployed $tag"
    return 0
  fi
  log "deploy of $tag failed"
  touch "$new/.failed"
  if [ -z "$prev" ] || [ -z "$prev_tag" ]; then
    record "$tag" "failed, nothing to roll back to"
    log "no previous release to roll back to"
    return 1
  fi
  log "rolling back to $prev_tag (release $(basename "$prev"))"
  switch_current "$prev"
  if compose "$prev" "$prev_tag" up -d --remove-orphans && health_check "$prev" "$prev_tag"; then
    record "$tag" "failed, rolled back to $prev_tag"
    log "rolled back to $prev_tag"
    return 1
  fi
  record "$tag" "failed, rollback to $prev_tag failed"
  log "ROLLBACK FAILED: the stack may be down"
  return 3
}

# --- actions -----------------------------------------------------------------------------------
do_deploy() {
  local tag=$1 id new listing prev f dest rc=0
  [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die 2 "refused: invalid image tag"
  lock
  id="$(date -u +%Y%m%dT%H%M%SZ)-$$-${tag:0:12}"
  new=$releases/$id
  tarball=$(mktemp "$state/upload.XXXXXX")
  trap 'rm -f -- "${tarball-}"' EXIT
  # Bounded read of the release tarball from stdin.
  head -c "$((MAX_RELEASE_BYTES + 1))" >"$tarball"
  [ "$(stat -c %s "$tarball")" -le "$MAX_RELEASE_BYTES" ] || die 1 "release tarball is larger than $MAX_RELEASE_BYTES bytes"
  [ -s "$tarball" ] || die 1 "no release tarball on stdin"
  listing=$(tar -tvf "$tarball") || die 1 "stdin is not a tar archive"
  # Only regular files and directories; no links, devices or fifos.
  if grep -qv '^[-d]' <<<"$listing"; then die 1 "release contains links or special files"; fi
  while IFS= read -r name; do
    case "/$name/" in
      */../* | //*) die 1 "release contains an unsafe path" ;;
      /.env/* | /./.env/* | /.brain-release/* | /./.brain-release/* | /.failed/* | /./.failed/*) die 1 "release must not contain .env, .brain-release or .failed" ;;
    esac
  done < <(tar -tf "$tarball")
  mkdir "$new"
  tar -xf "$tarball" -C "$new" --no-same-owner --no-same-permissions --no-overwrite-dir
  compose_file "$new" >/dev/null || { rm -rf -- "$new"; die 1 "release has no compose file (compose.yaml or docker-compose.yml)"; }
  # Each release gets its own copy of the secrets, so a rollback restores the previous ones too:
  # env/*.env from the release (the repo's templates) overlaid with the uploaded env/*.env, and
  # the uploaded .env (compose's variables) beside the compose file.
  mkdir -p "$new/env"
  chmod 700 "$new/env"
  find "$new/env" -type f -exec chmod 600 {} +
  for f in "$env_dir"/*.env "$env_dir/.env"; do
    [ -f "$f" ] || continue
    if [ "$(basename "$f")" = .env ]; then dest=$new/.env; else dest=$new/env/$(basename "$f"); fi
    (umask 077 && cp "$f" "$dest")
  done
  printf 'TAG=%s\nIMAGE=%s:%s\nDEPLOYED_AT=%s\n' "$tag" "$BRAIN_IMAGE_REPO" "$tag" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$new/.brain-release"
  prev=$(current_release)

  if [ "$PULL" != no ] && log "pulling $BRAIN_IMAGE_REPO:$tag" && ! compose "$new" "$tag" pull; then
    rm -rf -- "$new"
    die 1 "pull failed; nothing was changed"
  fi
  activate "$new" "$tag" "$prev" || rc=$?
  prune_releases
  return "$rc"
}

do_rollback() {
  local cur prev prev_tag rc=0
  lock
  cur=$(current_release)
  prev=$(previous_release)
  if [ -z "$prev" ] || [ ! -d "$prev" ]; then die 1 "no previous release"; fi
  prev_tag=$(release_tag "$prev")
  log "manual rollback to $prev_tag"
  activate "$prev" "$prev_tag" "$cur" || rc=$?
  return "$rc"
}

do_secrets() {
  local name=$1 lineno=0 line count=0
  [[ $name =~ ^(\.env|[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.env)$ ]] || die 2 "refused: secrets name must be .env or look like transform.env"
  lock
  umask 077
  tmp=$(mktemp "$env_dir/.$name.XXXXXX")
  trap 'rm -f -- "${tmp-}"' EXIT
  head -c 1048577 >"$tmp"
  [ "$(stat -c %s "$tmp")" -le 1048576 ] || die 1 "secrets file is too large"
  # Validate the dotenv shape without ever printing a value: report line numbers only.
  while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#.*)?$ ]] && continue
    [[ $line =~ ^(export[[:space:]]+)?[A-Za-z_][A-Za-z0-9_]*= ]] || die 1 "secrets $name: line $lineno is not KEY=VALUE"
    count=$((count + 1))
  done <"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$env_dir/$name"
  log "wrote env/$name ($count variables, mode 600)"
}

do_status() {
  local cur prev
  cur=$(current_release)
  prev=$(previous_release)
  printf 'current: %s %s\n' "$(basename "${cur:-none}")" "$( [ -n "$cur" ] && release_tag "$cur")"
  printf 'previous: %s %s\n' "$(basename "${prev:-none}")" "$( [ -n "$prev" ] && release_tag "$prev")"
  if [ -n "$cur" ]; then compose "$cur" "$(release_tag "$cur")" ps; fi
}

case "$action" in
  deploy)
    [ -n "$arg" ] || die 2 "usage: deploy <tag>"
    do_deploy "$arg"
    ;;
  secrets)
    [ -n "$arg" ] || die 2 "usage: secrets <name>.env"
    do_secrets "$arg"
    ;;
  rollback)
    [ -z "$arg" ] || die 2 "usage: rollback"
    do_rollback
    ;;
  status)
    [ -z "$arg" ] || die 2 "usage: status"
    do_status
    ;;
  *) die 2 "refused: not an allowed command" ;;
esac
