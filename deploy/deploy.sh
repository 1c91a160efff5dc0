#!/usr/bin/env bash
# brain-pipeline server-side deploy command.
#
# Installed as /opt/brain/deploy.sh and run ONLY through a forced command in the deploy user's
# authorized_keys (see deploy/install-deploy-user.sh), under an empty environment so that nothing
# the client or sshd passes (BASH_ENV, an AcceptEnv'd variable, ...) reaches bash:
#
#   command="/usr/bin/env -i SSH_ORIGINAL_COMMAND=\"$SSH_ORIGINAL_COMMAND\" /bin/bash /opt/brain/deploy.sh",restrict,... ssh-ed25519 AAAA... ci
#
# The client's requested command arrives in SSH_ORIGINAL_COMMAND and must be one of:
#
#   deploy <tag>     stdin: a tar stream of the release files (compose file, nats config, ...).
#                    Unpacks into releases/<id>, pulls, switches `current` atomically, runs
#                    `compose up -d --remove-orphans` with BRAIN_IMAGE=<BRAIN_IMAGE_REPO>:<tag>,
#                    health-checks, and rolls back to the previous release and tag on failure.
#   secrets <name>   stdin: the content of a dotenv file; written to env/<name> (mode 600).
#                    <name> is `.env` (compose's variables) or looks like `transform.env`.
#                    Validated with the services' parser's rules (see validate_env); `.env` also
#                    with compose's, and it must not hold a placeholder (`change-me`) of .env.example.
#                    Values are never printed. The next deploy copies env/*.env into its release's
#                    env/ (over the repo's templates) and env/.env to its .env (mode 600), so a
#                    rollback also restores the secrets the previous release ran with.
#   rollback         re-deploys the previous release and tag.
#   status           prints the current and previous tags and `compose ps`.
#
# Anything else is refused with exit status 2. Exit status 1 means the deploy failed (and was
# rolled back if a previous release existed); 3 means the rollback failed as well.
#
# A deploy, once it has read its tarball, finishes or rolls back whatever happens to its client:
# SIGHUP and SIGPIPE are ignored and its output goes to state/deploy.log as well as to the client.
#
# Settings come from deploy.conf next to this script, a shell fragment of KEY=VALUE lines that must
# be a regular file owned by root and writable by nobody else (it is sourced):
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
#   MAX_RELEASE_BYTES=52428800                  upper bound on the release tarball (uncompressed tar only)
#   MAX_UNPACKED_BYTES=52428800                 upper bound on the sum of the members' sizes (sparse files)
#   MAX_RELEASE_FILES=10000                     upper bound on the number of members
#
# Never add `set -x` here: the secrets action reads secret values.
set -euo pipefail
# A client that disconnects must not kill a deploy half-way (SIGPIPE on the next write, SIGHUP).
trap '' HUP PIPE
# Release files must stay readable by containers that bind-mount them; env files get 077 below.
umask 022
export LC_ALL=C
# Nothing from the caller's environment is trusted (the forced command runs under `env -i` as well).
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset BRAIN_DEPLOY_CONF BASH_ENV ENV CDPATH GLOBIGNORE
HOME=$(getent passwd "$(id -u)" | cut -d: -f6) || HOME=/
USER=$(id -un)
export HOME USER LOGNAME=$USER

die() { # <exit status> <message>
  printf 'deploy: %s\n' "$2" >&2 || true
  exit "$1"
}
log() { printf 'deploy: %s\n' "$*" >&2 || true; }

# --- configuration -----------------------------------------------------------------------------
script_dir=$(cd "$(dirname "$0")" && pwd -P)
conf=$script_dir/deploy.conf
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
MAX_UNPACKED_BYTES=
MAX_RELEASE_FILES=10000
# The config is sourced: only a regular file that root owns and nobody else may write.
[ -f "$conf" ] && [ ! -L "$conf" ] || die 2 "no config file $conf"
[ "$(stat -c %u "$conf")" = 0 ] || die 2 "refused: $conf is not owned by root"
if (($(stat -c '0%a' "$conf") & 8#022)); then die 2 "refused: $conf is writable by group or others"; fi
# shellcheck source=/dev/null
. "$conf"
[ -n "$BRAIN_IMAGE_REPO" ] || die 2 "BRAIN_IMAGE_REPO is not set in $conf"
MAX_UNPACKED_BYTES=${MAX_UNPACKED_BYTES:-$MAX_RELEASE_BYTES}
for v in HEALTH_TIMEOUT KEEP_RELEASES MAX_RELEASE_BYTES MAX_UNPACKED_BYTES MAX_RELEASE_FILES; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die 2 "$v must be a number"
done

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
# Fails closed: a failed `docker inspect`, or fewer lines than containers, is "not healthy yet".
default_health() { # <release dir> <tag>
  local ids out n_ids n_lines=0 bad=0 name status code health
  ids=$(compose "$1" "$2" ps -a -q) || return 1
  [ -n "$ids" ] || { log "health: no containers"; return 1; }
  # shellcheck disable=SC2086
  out=$($DOCKER_CMD inspect --format '{{.Name}} {{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $ids) ||
    { log "health: docker inspect failed"; return 1; }
  n_ids=$(wc -w <<<"$ids")
  while read -r name status code health; do
    [ -n "$name" ] || continue
    n_lines=$((n_lines + 1))
    case "$status:$health" in
      running:healthy | running:none) ;;
      exited:*) [ "$code" = 0 ] || { log "health: $name exited with $code"; return 2; } ;;
      *:unhealthy) log "health: $name is unhealthy"; return 2 ;;
      *) bad=1 ;;
    esac
  done <<<"$out"
  [ "$n_lines" = "$n_ids" ] || { log "health: $n_ids containers, docker inspect described $n_lines"; return 1; }
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

# Never changes the deploy's outcome: a directory it cannot remove is reported and left.
prune_releases() {
  local keep=$KEEP_RELEASES cur prev dir n=0
  cur=$(current_release)
  prev=$(previous_release)
  # Newest first (release ids start with a UTC timestamp).
  while IFS= read -r dir; do
    n=$((n + 1))
    [ "$n" -le "$keep" ] && continue
    if [ "$releases/$dir" = "$cur" ] || [ "$releases/$dir" = "$prev" ]; then continue; fi
    # A release may hold read-only directories (tar keeps their modes): make them removable first.
    chmod -R u+rwX -- "${releases:?}/$dir" 2>/dev/null || true
    rm -rf -- "${releases:?}/$dir" 2>/dev/null || log "prune: could not remove releases/$dir"
  done < <(find "$releases" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -r)
}

# A release that failed its deploy (marked .failed) is never a rollback target.
usable_release() { # <release dir>
  [ -n "$1" ] && [ -d "$1" ] && [ ! -e "$1/.failed" ]
}

# Brings up <release dir> with <tag>; on failure rolls back to <previous dir> (may be empty).
activate() { # <new dir> <tag> <previous dir>
  local new=$1 tag=$2 prev=$3 prev_tag=
  [ -n "$prev" ] && prev_tag=$(release_tag "$prev")
  switch_current "$new"
  log "starting $BRAIN_IMAGE_REPO:$tag (release $(basename "$new"))"
  if compose "$new" "$tag" up -d --remove-orphans && health_check "$new" "$tag"; then
    if usable_release "$prev" && [ "$prev" != "$new" ]; then
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
  if ! usable_release "$prev" || [ -z "$prev_tag" ]; then
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

# --- the secrets' format ---------------------------------------------------------------------------
# Validates a dotenv file without printing any of it (line numbers only) and prints its number of
# variables. Accepted is the part of the grammar of the `dotenv` package (v17+, which the services
# parse env files with: shared/envfile.ts, shared/config.ts) that it reads without dropping or
# cutting anything, so what is accepted here is what the services get:
#   - blank lines, and lines whose first non-blank character is `#`;
#   - `[export ]KEY=VALUE` with KEY of [A-Za-z0-9_.-] and blanks around `=` (or dotenv's `KEY: VALUE`);
#   - an unquoted VALUE runs to the end of the line or to a ` #` comment; a `#` with no blank
#     before it is refused (dotenv would cut the value there: `P=ab#c` reads as `ab`);
#   - a VALUE quoted with ', " or ` may span lines; it ends at the first such quote not preceded by
#     a backslash, and only blanks and a comment may follow it ("..." turns \n and \r into newlines);
#   - CRLF and CR end lines as LF does (as in dotenv); NUL, other control characters but tab, and
#     U+2028/U+2029 (JavaScript line ends) are refused.
# Profile `compose` (the `.env` that compose reads, not dotenv) refuses in addition what compose
# v2 and docker-compose 1.29 read differently: KEY must be a shell name, no `KEY:` form, no
# backquotes, no backslash in a value nor a quote in an unquoted one, `$` only in single quotes (compose interpolates it
# elsewhere), and no `change-me` placeholder of .env.example.
validate_env() { # <file> <label for messages> <dotenv|compose>
  local file=$1 label=$2 profile=$3 text n i=0 lineno line key sep rest q seg pre done_part value after count=0 start
  local -a lines
  [ "$(tr -d '\000' <"$file" | wc -c)" = "$(stat -c %s "$file")" ] || die 1 "$label: contains a NUL byte"
  text=$(cat -- "$file" && printf x)
  text=${text%x}
  text=${text//$'\r\n'/$'\n'}
  text=${text//$'\r'/$'\n'}
  if [[ $text == *[$'\001'-$'\010'$'\013'-$'\037'$'\177']* ]]; then die 1 "$label: contains a control character"; fi
  if [[ $text == *$'\xe2\x80\xa8'* || $text == *$'\xe2\x80\xa9'* ]]; then die 1 "$label: contains U+2028 or U+2029"; fi
  mapfile -t lines <<<"$text"
  n=${#lines[@]}
  while [ "$i" -lt "$n" ]; do
    line=${lines[i]}
    i=$((i + 1))
    lineno=$i
    [[ $line =~ ^[[:blank:]]*(#.*)?$ ]] && continue
    [[ $line =~ ^[[:blank:]]*(export[[:blank:]]+)?([A-Za-z0-9_.-]+)([[:blank:]]*=|:[[:blank:]])(.*)$ ]] ||
      die 1 "$label: line $lineno is not KEY=VALUE"
    key=${BASH_REMATCH[2]} sep=${BASH_REMATCH[3]} rest=${BASH_REMATCH[4]}
    if [ "$profile" = compose ]; then
      [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die 1 "$label: line $lineno: the name is not a shell variable name"
      [[ $sep == *= ]] || die 1 "$label: line $lineno is not KEY=VALUE"
    fi
    # The blanks after the separator, then the value.
    if [[ $rest =~ ^([[:blank:]]*)(.*)$ ]]; then sep+=${BASH_REMATCH[1]} rest=${BASH_REMATCH[2]}; fi
    q=${rest:0:1}
    case "$q" in
      \' | \" | \`)
        [ "$profile" = compose ] && [ "$q" = \` ] && die 1 "$label: line $lineno: compose does not read backquoted values"
        start=$lineno value= seg=${rest:1}
        while :; do
          # The first quote in this line not preceded by a backslash closes the value.
          done_part=
          while [[ $seg == *"$q"* ]]; do
            pre=${seg%%"$q"*}
            if [[ $pre == *\\ ]]; then
              done_part+=$pre$q
              seg=${seg#"$pre$q"}
              continue
            fi
            break
          done
          if [[ $seg == *"$q"* ]]; then
            pre=${seg%%"$q"*}
            value+=$done_part$pre
            after=${seg#"$pre$q"}
            break
          fi
          value+=$done_part$seg$'\n'
          [ "$i" -lt "$n" ] || die 1 "$label: line $start: the quoted value is never closed"
          seg=${lines[i]}
          i=$((i + 1))
        done
        [[ $after =~ ^[[:blank:]]*(#.*)?$ ]] || die 1 "$label: line $start: only a comment may follow a quoted value"
        if [ "$profile" = compose ]; then
          [[ $value == *\\* ]] && die 1 "$label: line $start: compose reads a backslash in a quoted value differently"
          [ "$q" = \" ] && [[ $value == *\$* ]] && die 1 "$label: line $start: compose interpolates \$ in double quotes: use single quotes"
        fi
        ;;
      *)
        value=$rest
        if [[ $value == *#* ]]; then
          pre=${value%%#*}
          # dotenv ends an unquoted value at its first `#`; only a `#` after a blank is a comment everywhere.
          [[ ( -z $pre && $sep == *[[:blank:]] ) || $pre == *[[:blank:]] ]] ||
            die 1 "$label: line $lineno: a # in an unquoted value cuts it there; quote the value"
          value=$pre
        fi
        if [ "$profile" = compose ]; then
          [[ $value == *[\$\\\'\"\`]* ]] && die 1 "$label: line $lineno: compose reads \$, backslashes and quotes in an unquoted value differently: single-quote it"
        fi
        ;;
    esac
    if [ "$profile" = compose ] && [[ ${value,,} == *change-me* ]]; then
      die 1 "$label: line $lineno ($key) still holds a placeholder from .env.example"
    fi
    count=$((count + 1))
  done
  printf '%s\n' "$count"
}

env_profile() { # <file name>: compose reads .env, the services read the rest with dotenv
  if [ "$1" = .env ]; then echo compose; else echo dotenv; fi
}

# Sets `norm` to the path GNU tar extracts member <name> to (repeated ./ and // folded), or to
# the empty string for the release directory itself; returns 1 for absolute or `..` paths.
normalise_member() { # <name>
  local part IFS=/
  local -a parts out=()
  norm=
  [[ $1 == /* ]] && return 1
  read -r -a parts <<<"$1"
  for part in "${parts[@]}"; do
    case "$part" in
      '' | .) ;;
      ..) return 1 ;;
      *) out+=("$part") ;;
    esac
  done
  norm="${out[*]}"
}

# From here on the output goes to state/deploy.log as well as to the client; `tee -p` goes on
# writing the log when the client's pipe is gone, so a disconnect does not stop the deploy.
detach_output() {
  local log_file=$state/deploy.log
  if [ -f "$log_file" ] && [ "$(stat -c %s "$log_file")" -gt 1048576 ]; then
    tail -c 524288 "$log_file" >"$log_file.tmp" && mv -f "$log_file.tmp" "$log_file"
  fi
  exec > >(exec tee -p -a -- "$log_file" >&2) 2>&1
  printf '== %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$request" >>"$log_file" || true
}

# --- actions -----------------------------------------------------------------------------------
do_deploy() {
  local tag=$1 id new listing prev f dest rc=0 name perms owner size rest files=0 total=0
  [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die 2 "refused: invalid image tag"
  lock
  detach_output
  # Staged secrets may have been put there by hand: the same checks as an upload.
  for f in "$env_dir"/*.env "$env_dir/.env"; do
    [ -f "$f" ] || continue
    validate_env "$f" "env/$(basename "$f")" "$(env_profile "$(basename "$f")")" >/dev/null
  done
  id="$(date -u +%Y%m%dT%H%M%SZ)-$$-${tag:0:12}"
  new=$releases/$id
  tarball=$(mktemp "$state/upload.XXXXXX")
  trap 'rm -f -- "${tarball-}"' EXIT
  # Bounded read of the release tarball from stdin.
  head -c "$((MAX_RELEASE_BYTES + 1))" >"$tarball"
  [ "$(stat -c %s "$tarball")" -le "$MAX_RELEASE_BYTES" ] || die 1 "release tarball is larger than $MAX_RELEASE_BYTES bytes"
  [ -s "$tarball" ] || die 1 "no release tarball on stdin"
  # tar reading stdin does not decompress, so a compressed upload is refused and the size limit
  # bounds what is unpacked; the members' sizes are summed too (a sparse member is small in the tar).
  listing=$(tar --numeric-owner -tvf - <"$tarball") || die 1 "stdin is not an uncompressed tar archive"
  while read -r perms owner size rest; do
    [ -n "$perms" ] || continue
    # Only regular files and directories; no links, devices or fifos.
    case "$perms" in -* | d*) ;; *) die 1 "release contains links or special files" ;; esac
    [[ $size =~ ^[0-9]+$ ]] || die 1 "release: cannot read the size of a member"
    files=$((files + 1))
    total=$((total + size))
  done <<<"$listing"
  [ "$files" -le "$MAX_RELEASE_FILES" ] || die 1 "release has more than $MAX_RELEASE_FILES members"
  [ "$total" -le "$MAX_UNPACKED_BYTES" ] || die 1 "release unpacks to more than $MAX_UNPACKED_BYTES bytes"
  while IFS= read -r name; do
    normalise_member "$name" || die 1 "release contains an unsafe path"
    case "${norm%%/*}" in
      .env | .brain-release | .failed) die 1 "release must not contain .env, .brain-release or .failed" ;;
    esac
  done < <(tar -tf - <"$tarball")
  mkdir "$new"
  tar -xf - -C "$new" --no-same-owner --no-same-permissions --no-overwrite-dir <"$tarball"
  compose_file "$new" >/dev/null || { rm -rf -- "$new"; die 1 "release has no compose file (compose.yaml or docker-compose.yml)"; }
  [ ! -e "$new/env" ] || [ -d "$new/env" ] || { rm -rf -- "$new"; die 1 "release has a file named env"; }
  # Each release gets its own copy of the secrets, so a rollback restores the previous ones too:
  # env/*.env from the release (the repo's templates) overlaid with the uploaded env/*.env, and
  # the uploaded .env (compose's variables) beside the compose file. Each is a new file of mode
  # 600 (never copied onto an existing file, whose mode cp would keep).
  mkdir -p "$new/env"
  chmod 700 "$new/env"
  find "$new/env" -type f -exec chmod 600 {} +
  for f in "$env_dir"/*.env "$env_dir/.env"; do
    [ -f "$f" ] || continue
    if [ "$(basename "$f")" = .env ]; then dest=$new/.env; else dest=$new/env/$(basename "$f"); fi
    rm -rf -- "$dest"
    install -m 600 -T -- "$f" "$dest"
  done
  printf 'TAG=%s\nIMAGE=%s:%s\nDEPLOYED_AT=%s\n' "$tag" "$BRAIN_IMAGE_REPO" "$tag" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$new/.brain-release"
  prev=$(current_release)
  usable_release "$prev" || prev=

  if [ "$PULL" != no ] && log "pulling $BRAIN_IMAGE_REPO:$tag" && ! compose "$new" "$tag" pull; then
    rm -rf -- "$new"
    die 1 "pull failed; nothing was changed"
  fi
  activate "$new" "$tag" "$prev" || rc=$?
  # The deploy's exit status is its own: pruning never changes it.
  prune_releases || log "prune failed"
  return "$rc"
}

do_rollback() {
  local cur prev prev_tag rc=0
  lock
  detach_output
  cur=$(current_release)
  prev=$(previous_release)
  usable_release "$prev" || die 1 "no previous release"
  prev_tag=$(release_tag "$prev")
  log "manual rollback to $prev_tag"
  activate "$prev" "$prev_tag" "$cur" || rc=$?
  return "$rc"
}

do_secrets() {
  local name=$1 count
  [[ $name =~ ^(\.env|[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.env)$ ]] || die 2 "refused: secrets name must be .env or look like transform.env"
  lock
  umask 077
  tmp=$(mktemp "$env_dir/.$name.XXXXXX")
  trap 'rm -f -- "${tmp-}"' EXIT
  head -c 1048577 >"$tmp"
  [ "$(stat -c %s "$tmp")" -le 1048576 ] || die 1 "secrets file is too large"
  count=$(validate_env "$tmp" "secrets $name" "$(env_profile "$name")") || exit 1
  chmod 600 "$tmp"
  mv -f "$tmp" "$env_dir/$name"
  log "wrote env/$name ($count variables, mode 600)"
}

do_status() {
  local cur prev
  cur=$(current_release)
  prev=$(previous_release)
  printf 'current: %s %s%s\n' "$(basename "${cur:-none}")" "$( [ -n "$cur" ] && release_tag "$cur")" "$( [ -n "$cur" ] && [ -e "$cur/.failed" ] && echo ' (failed)')"
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
