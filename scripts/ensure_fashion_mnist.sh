#!/usr/bin/env bash
# `make data`: is Fashion-MNIST where marginbench.data looks for it? If not, install Debian's
# dataset-fashion-mnist (as root, or with passwordless sudo); if that cannot be done, stop with
# one line that says what to run.
#
# The folders and file names are marginbench/data.py's (_fashion_candidates, FASHION_FILES):
# per split, the first folder holding both its IDX files (.gz or not) among
# <data_dir>/FashionMNIST/raw, <data_dir>/fashion-mnist, <data_dir>/fashion_mnist and Debian's
# /usr/share/datasets/fashion-mnist. Both splits are needed: the demo's pseudo-margin draws
# held-out training images.
#
# Environment (the Makefile passes them; tests point them elsewhere):
#   DATA_DIR              paths.data_dir (default: $MARGINBENCH_DATA_DIR or data)
#   FASHION_MNIST_DEBIAN  where the Debian package puts the files
#   APT_GET               the apt-get command
set -uo pipefail

data_dir=${DATA_DIR:-${MARGINBENCH_DATA_DIR:-data}}
debian=${FASHION_MNIST_DEBIAN:-/usr/share/datasets/fashion-mnist}
apt=${APT_GET:-apt-get}

has() { [ -f "$1" ] || [ -f "$1.gz" ]; }

found() {
    local split folder ok
    for split in t10k train; do
        ok=""
        for folder in "$data_dir/FashionMNIST/raw" "$data_dir/fashion-mnist" "$data_dir/fashion_mnist" "$debian"; do
            if has "$folder/$split-images-idx3-ubyte" && has "$folder/$split-labels-idx1-ubyte"; then
                ok=1
                break
            fi
        done
        [ -n "$ok" ] || return 1
    done
}

cannot() {
    echo "Fashion-MNIST missing ($1): run \`sudo apt-get install dataset-fashion-mnist\`, or put the four IDX .gz files (t10k-images-idx3-ubyte.gz ...) in $data_dir/fashion-mnist/" >&2
    exit 1
}

found && exit 0

if [ "$(id -u)" = 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    sudo=(sudo -n)
else
    cannot "not root and no passwordless sudo to install it"
fi
command -v "$apt" >/dev/null 2>&1 || cannot "$apt not found"

echo "Fashion-MNIST missing: installing Debian's dataset-fashion-mnist"
log=$(mktemp -t fashion-mnist-apt.XXXXXX)
install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "$apt" install -y -qq dataset-fashion-mnist >>"$log" 2>&1
}
# without `apt-get update` first: works offline when the package lists are there already
if install || { "${sudo[@]}" "$apt" update -qq >>"$log" 2>&1 && install; }; then
    if found; then
        rm -f "$log"
        exit 0
    fi
    cannot "dataset-fashion-mnist installed, but its files are not in $debian; log: $log"
fi
cannot "\`$apt install dataset-fashion-mnist\` failed; log: $log"
