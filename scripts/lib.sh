# SPDX-License-Identifier: GPL-2.0
# Shared helpers for the reuseport-migrate scripts. Source it, don't run it.

set -euo pipefail

RM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Persistent, git-ignored work area: kernel trees, build dirs, logs.
RM_WORK=${RM_WORK:-$RM_REPO/.work}
RM_LLVM_BIN=/usr/lib/llvm-19/bin
# What the caller set for the applied tree and the series: it wins over the
# tree's defaults (checks that apply a part of a series, or a broken one).
_rm_env_src_patched=${RM_SRC_PATCHED:-}
_rm_env_patches=${RM_PATCHES:-}
_rm_env_base_pin=${RM_BASE_PIN:-}

# set_tree 6.12|mainline: the tree the scripts work on (RM_TREE, or the
# scripts' --tree option, which calls this). Everything per tree is set here:
#   6.12      Debian's linux-source-6.12, pinned, installed with apt from the
#             host's own sources (bookworm-security); the series is patches/.
#             Its paths are the historical ones: .work/src/{base,patched},
#             .work/build/{base,patched,...}, .work/base-version.
#   mainline  Debian's linux-source-7.3, pinned, from trixie-backports, fetched
#             with apt-get download through a private apt state in
#             .work/apt/mainline (the host's apt sources stay as they are);
#             the queue is patches/mainline/net/ (fixes) then
#             patches/mainline/net-next/ (features). Trees in
#             .work/src/mainline/{base,patched}, builds in
#             .work/build/mainline-{base,patched,...}, .work/base-version.mainline.
# The variables are for the scripts that source this file.
# shellcheck disable=SC2034
set_tree() {
	case "$1" in
	6.12)
		export RM_TREE=6.12
		RM_BASE_PKG=linux-source-6.12
		RM_BASE_PIN=${_rm_env_base_pin:-6.12.117-1~deb12u1}
		RM_SRC_BASE=$RM_WORK/src/base
		RM_SRC_PATCHED=${_rm_env_src_patched:-$RM_WORK/src/patched}
		RM_PATCHES=${_rm_env_patches:-$RM_REPO/patches}
		RM_PATCH_QUEUES=("$RM_PATCHES")
		RM_BUILD_PREFIX=
		RM_KCONFIG_GONE=()
		RM_BASE_VERSION_FILE=$RM_WORK/base-version
		RM_STAMP_PREFIX=
		;;
	mainline)
		export RM_TREE=mainline
		RM_BASE_PKG=linux-source-7.3
		RM_BASE_PIN=${RM_BASE_PIN_MAINLINE:-7.3.4-1~bpo13+1}
		RM_BASE_SUITE=trixie-backports
		RM_APT_DIR=$RM_WORK/apt/mainline
		RM_SRC_BASE=$RM_WORK/src/mainline/base
		RM_SRC_PATCHED=${_rm_env_src_patched:-$RM_WORK/src/mainline/patched}
		if [ -n "$_rm_env_patches" ]; then
			RM_PATCHES=$_rm_env_patches
			RM_PATCH_QUEUES=("$RM_PATCHES")
		else
			RM_PATCHES=$RM_REPO/patches/mainline
			RM_PATCH_QUEUES=("$RM_PATCHES/net" "$RM_PATCHES/net-next")
		fi
		RM_BUILD_PREFIX=mainline-
		# Options of the config fragments that this tree no longer has,
		# with what took their place; scripts/build-kernel skips them.
		# PROC_SYSCTL: /proc/sys is SYSCTL itself in 7.3's fs/proc/Kconfig.
		RM_KCONFIG_GONE=(CONFIG_PROC_SYSCTL)
		RM_BASE_VERSION_FILE=$RM_WORK/base-version.mainline
		RM_STAMP_PREFIX=mainline-
		;;
	*) die "unknown tree '$1'" "use --tree 6.12 or --tree mainline (or RM_TREE=6.12|mainline)" ;;
	esac
}

# take_tree_opt "$@": for scripts whose options come in any order. Sets the
# tree from --tree T or --tree=T and leaves the other arguments in
# RM_ARGS, in order.
take_tree_opt() {
	RM_ARGS=()
	while [ $# -gt 0 ]; do
		case "$1" in
		--tree)
			[ $# -ge 2 ] || die "--tree needs a value" "use --tree 6.12 or --tree mainline"
			set_tree "$2"
			shift 2
			;;
		--tree=*) set_tree "${1#--tree=}"; shift ;;
		*) RM_ARGS+=("$1"); shift ;;
		esac
	done
}

RM_LOGS=${RM_LOGS:-$RM_WORK/logs}

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
	[ -f "$RM_BASE_VERSION_FILE" ] ||
		die "no $RM_TREE base tree prepared in $RM_WORK" "run scripts/prepare-tree --tree $RM_TREE"
	cat "$RM_BASE_VERSION_FILE"
}

# build_dir base|patched|debug -> build directory (debug: the patched tree
# built with selftests/config/debug.config); mainline's are mainline-NAME.
build_dir() {
	case "$1" in
	base | patched | debug) echo "$RM_WORK/build/$RM_BUILD_PREFIX$1" ;;
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

# Patches that git am applies, in order (no cover letter is one): the
# tree's queues one after the other. A missing or empty queue has none.
series_patches() {
	local p q
	for q in "${RM_PATCH_QUEUES[@]}"; do
		for p in "$q"/[0-9][0-9][0-9][0-9]-*.patch; do
			[ -e "$p" ] || continue
			case "$(basename "$p")" in 0000-*) continue ;; esac
			echo "$p"
		done
	done
}

set_tree "${RM_TREE:-6.12}"
mkdir -p "$RM_LOGS"
