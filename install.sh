#!/bin/sh
# install.sh: build chainmail in release mode and install its binaries.
#
#   ./install.sh [--prefix DIR] [--force] [--no-build]
#
# Binaries go to DIR/bin (DIR defaults to /usr/local). A manifest of what
# was installed, with checksums, is kept in DIR/share/chainmail/manifest.
# A file that is in the way and that this script did not install (or that
# changed since) is left alone and the installation stops, unless --force.
#
# qmail integration (see doc/qmail-remote.md):
#
#   ./install.sh --qmail [QMAILHOME]        put qmail-remote and qmail-qmqpc into
#                                           QMAILHOME/bin (default /var/qmail),
#                                           keeping the stock binaries as *.orig;
#                                           qmail's 'make setup' undoes it
#                                           silently: prefer --qmail-beside
#   ./install.sh --qmail-beside [QMAILHOME] install as QMAILHOME/bin/qmail-remote-chainmail
#                                           for use through QMAILREMOTE
#   ./install.sh --qmail-undo [QMAILHOME]   put the stock qmail-remote back
set -eu

prefix=/usr/local
force=0
build=1
qmail_mode=
qmail_home=/var/qmail
BINARIES="ucspi-tlsd smtpd-starttls-proxy-io qrelay remusockd rsockd qmail-remote qmail-remote-io qmail-qmqpc"
# The qmail side is built with the release-small profile (see Cargo.toml).
SERVER_BINARIES="ucspi-tlsd smtpd-starttls-proxy-io qrelay remusockd rsockd"
QMAIL_BINARIES="qmail-remote qmail-remote-io qmail-qmqpc"

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 100
}

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --force) force=1; shift ;;
        --no-build) build=0; shift ;;
        --qmail|--qmail-beside|--qmail-undo)
            qmail_mode=${1#--}; shift
            if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then qmail_home=$1; shift; fi ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage ;;
    esac
done

top=$(cd "$(dirname "$0")" && pwd)
targetdir=${CARGO_TARGET_DIR:-$top/target}

# Where the build left binary $1.
built() {
    case $1 in
        qmail-remote* | qmail-qmqpc) echo "$targetdir/release-small/$1" ;;
        *) echo "$targetdir/release/$1" ;;
    esac
}

die() { echo "install.sh: fatal: $*" >&2; exit 111; }
say() { echo "install.sh: $*"; }

sum() { sha256sum "$1" | cut -d' ' -f1; }

manifest_dir=$prefix/share/chainmail
manifest=$manifest_dir/manifest

# manifest lines: <sha256> <path>
recorded_sum() {
    [ -f "$manifest" ] || return 1
    awk -v p="$1" '$2 == p { s = $1 } END { if (s == "") exit 1; print s }' "$manifest"
}

record() { # path
    mkdir -p "$manifest_dir"
    tmp=$manifest.tmp.$$
    { [ -f "$manifest" ] && awk -v p="$1" '$2 != p' "$manifest"; sum "$1" | sed "s|\$| $1|"; } > "$tmp"
    mv "$tmp" "$manifest"
}

# Installs $1 as $2 (mode 0755) unless something else is in the way.
put() {
    src=$1 dst=$2
    if [ -e "$dst" ] && [ "$force" = 0 ]; then
        old=$(recorded_sum "$dst" || true)
        if [ -z "$old" ]; then
            die "$dst exists and was not installed by chainmail (use --force to replace it)"
        fi
        if [ "$old" != "$(sum "$dst")" ]; then
            die "$dst was changed since chainmail installed it (use --force to replace it)"
        fi
    fi
    tmp=$dst.chainmail-new.$$
    cp "$src" "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$dst"
    record "$dst"
    say "installed $dst"
}

# qmail-remote keeps smtproutes.cdb and tcpto6 in run/qmail-remote, which
# must be writable by the user it runs as (qmailr, when that user exists).
make_run_dir() {
    run=$qmail_home/run/qmail-remote
    mkdir -p "$run"
    chmod 2750 "$qmail_home/run" "$run"
    if id qmailr >/dev/null 2>&1; then
        group=$(id -gn qmailr)
        chown root:"$group" "$qmail_home/run"
        chown qmailr:"$group" "$run"
    fi
    say "created $run"
}

if [ "$build" = 1 ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to build (https://rustup.rs)"
    # ucspi-tlsd and smtpd-starttls-proxy-io are exec'd for every
    # connection: linked statically (static-pie) too, a session costs about
    # 1 ms of CPU less and an idle TLS engine 50 KiB less (bench/RESULTS.md).
    for b in $SERVER_BINARIES; do
        (cd "$top" && cargo rustc --release --locked -p "$b" --bin "$b" -- -C target-feature=+crt-static) ||
            die "the build of $b failed"
    done
    # qmail-remote and qmail-remote-io run once per delivery: linked
    # statically (static-pie), they skip the dynamic loader and touch far
    # fewer pages (doc/qmail-remote.md, Notes). Only the final link differs,
    # so the dependencies are built once for both.
    for b in $QMAIL_BINARIES; do
        (cd "$top" && cargo rustc --profile release-small --locked -p "$b" --bin "$b" -- -C target-feature=+crt-static) ||
            die "the build of $b failed"
    done
fi
for b in $BINARIES; do
    [ -x "$(built "$b")" ] || die "$(built "$b") is missing: build first (see install.sh)"
done

case $qmail_mode in
    "")
        mkdir -p "$prefix/bin"
        for b in $BINARIES; do
            put "$(built "$b")" "$prefix/bin/$b"
        done
        ;;
    qmail)
        bin=$qmail_home/bin
        [ -d "$bin" ] || die "$bin is not a directory: is qmail installed in $qmail_home?"
        # qmail-remote finds qmail-remote-io beside itself.
        if [ -e "$bin/qmail-remote" ] && ! recorded_sum "$bin/qmail-remote" >/dev/null; then
            if [ -e "$bin/qmail-remote.orig" ]; then
                die "$bin/qmail-remote.orig already exists; not overwriting the saved stock binary"
            fi
            cp -p "$bin/qmail-remote" "$bin/qmail-remote.orig"
            say "saved the stock binary as $bin/qmail-remote.orig"
            force_one=1
        else
            force_one=0
        fi
        saved_force=$force
        [ "$force_one" = 1 ] && force=1
        put "$(built qmail-remote)" "$bin/qmail-remote"
        force=$saved_force
        put "$(built qmail-remote-io)" "$bin/qmail-remote-io"
        # qmail-qmqpc (doc/qmail-qmqpc.md), the stock one kept as .orig.
        if [ -e "$bin/qmail-qmqpc" ] && ! recorded_sum "$bin/qmail-qmqpc" >/dev/null; then
            [ -e "$bin/qmail-qmqpc.orig" ] || { cp -p "$bin/qmail-qmqpc" "$bin/qmail-qmqpc.orig" && say "saved the stock binary as $bin/qmail-qmqpc.orig"; }
            saved_force=$force
            force=1
            put "$(built qmail-qmqpc)" "$bin/qmail-qmqpc"
            force=$saved_force
        else
            put "$(built qmail-qmqpc)" "$bin/qmail-qmqpc"
        fi
        say "on a mini-qmail host, point $bin/qmail-queue at qmail-qmqpc (ln -sf qmail-qmqpc $bin/qmail-queue)"
        make_run_dir
        say "undo with: $0 --qmail-undo $qmail_home"
        # qmail's own 'make setup' (or 'make setup check', or a package
        # upgrade) copies its qmail-remote over this one without a word.
        say "warning: re-running qmail's 'make setup' (or upgrading its package) puts the stock $bin/qmail-remote back without notice"
        say "warning: where qmail-rspawn honours QMAILREMOTE (notqmail >= 1.08), prefer: $0 --qmail-beside $qmail_home"
        ;;
    qmail-beside)
        bin=$qmail_home/bin
        [ -d "$bin" ] || die "$bin is not a directory: is qmail installed in $qmail_home?"
        put "$(built qmail-remote)" "$bin/qmail-remote-chainmail"
        put "$(built qmail-remote-io)" "$bin/qmail-remote-io"
        make_run_dir
        say "set QMAILREMOTE=$bin/qmail-remote-chainmail in qmail-send's environment (notqmail >= 1.08)"
        ;;
    qmail-undo)
        bin=$qmail_home/bin
        [ -e "$bin/qmail-remote.orig" ] || die "$bin/qmail-remote.orig does not exist: nothing to undo"
        cur=$(recorded_sum "$bin/qmail-remote" || true)
        if [ -n "$cur" ] && [ "$cur" != "$(sum "$bin/qmail-remote")" ] && [ "$force" = 0 ]; then
            die "$bin/qmail-remote changed since chainmail installed it (use --force)"
        fi
        mv -f "$bin/qmail-remote.orig" "$bin/qmail-remote"
        rm -f "$bin/qmail-remote-io"
        if [ -e "$bin/qmail-qmqpc.orig" ]; then
            mv -f "$bin/qmail-qmqpc.orig" "$bin/qmail-qmqpc"
            say "restored the stock $bin/qmail-qmqpc"
        fi
        if [ -f "$manifest" ]; then
            awk -v a="$bin/qmail-remote" -v b="$bin/qmail-remote-io" '$2 != a && $2 != b' "$manifest" > "$manifest.tmp.$$"
            mv "$manifest.tmp.$$" "$manifest"
        fi
        say "restored the stock $bin/qmail-remote"
        ;;
esac
