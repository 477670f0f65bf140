# SPDX-License-Identifier: GPL-2.0
# Shared helpers for the reuseport-migrate scripts. Source it, don't run it.

set -euo pipefail

RM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Persistent, git-ignored work area: kernel trees, build dirs, logs.
RM_WORK=${RM_WORK:-$RM_REPO/.work}
# The base tree we anchor on: Debian's linux-source-6.12, pinned.
RM_BASE_PKG=linux-source-6.12
RM_BASE_PIN=${RM_BASE_PIN:-6.12.117-1~deb12u1}
RM_LLVM_BIN=/usr/lib/llvm-19/bin
RM_SRC_BASE=$RM_WORK/src/base
# The series and the worktree it is applied in (overridable for checks
# that apply a part of it, or a broken one).
RM_PATCHES=${RM_PATCHES:-$RM_REPO/patches}
RM_SRC_PATCHED=${RM_SRC_PATCHED:-$RM_WORK/src/patched}
RM_LOGS=$RM_WORK/logs

export PATH="$RM_LLVM_BIN:$HOME/.cargo/bin:$PATH"

_rm_prog=$(basename "$0")

# step "what is happening": one progress line on stderr.
step() { printf '==> [%s %(%H:%M:%S)T] %s\n' "$_rm_prog" -1 "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
warn() { printf '!!! [%s] WARNING: %s\n' "$_rm_prog" "$*" >&2; }

# die "what failed" ["how to fix it"]: name the cause, exit non-zero.
die() {
	printf '!!! [%s] ERROR: %s\n' "$_rm_prog" "$1" >&2
	[ $# -gt 1 ] && printf '!!! [%s] fix: %s\n' "$_rm_prog" "$2" >&2
	exit 1
}

need_cmd() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 ||
			die "required tool '$c' not found in PATH" "run scripts/setup-host (it installs the toolchain)"
	done
}

# The Debian version of the base tree actually in use (set by scripts/prepare-tree).
base_version() {
	[ -f "$RM_WORK/base-version" ] ||
		die "no base tree prepared in $RM_WORK" "run scripts/prepare-tree"
	cat "$RM_WORK/base-version"
}

# build_dir base|patched|debug -> build directory (debug: the patched tree
# built with selftests/config/debug.config)
build_dir() {
	case "$1" in
	base | patched | debug) echo "$RM_WORK/build/$1" ;;
	*) die "unknown kernel flavour '$1'" "use 'base', 'patched' or 'debug'" ;;
	esac
}

src_dir() {
	case "$1" in
	base) echo "$RM_SRC_BASE" ;;
	patched) echo "$RM_SRC_PATCHED" ;;
	*) die "unknown kernel flavour '$1'" "use 'base' or 'patched'" ;;
	esac
}

# Patches that git am applies, in order (the cover letter is not one).
series_patches() {
	local p
	for p in "$RM_PATCHES"/[0-9][0-9][0-9][0-9]-*.patch; do
		[ -e "$p" ] || continue
		case "$(basename "$p")" in 0000-*) continue ;; esac
		echo "$p"
	done
}

mkdir -p "$RM_LOGS"
